"""samplernn-tf: SampleRNN raw-audio generation in TensorFlow + Keras 3."""

__version__ = "0.1.0"
