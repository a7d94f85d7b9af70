"""Export: a model as ONNX graphs (+ a CTranslate2 decoder) in Hugging Face's ONNX layout, int8 quantization."""
