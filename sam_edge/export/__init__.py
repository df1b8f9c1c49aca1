"""Building deployable bundles: ONNX export, fp16/int8 conversion, validation.

Needs torch and onnx; the runtime that loads the bundles does not.
"""
