"""Models: loading Whisper (built-in, CTranslate2, Hugging Face, lite-whisper), its linears, cost model and
checkpoints."""
