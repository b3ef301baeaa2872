"""tf.data input pipelines: decoding, quantization, TBPTT windows, datasets."""
