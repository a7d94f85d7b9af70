"""The Hugging Face remote-code files copied into every exported lite-whisper checkpoint.

They import only torch and transformers, so a checkpoint loads with
`AutoModel.from_pretrained(dir, trust_remote_code=True)` where litewhisper is not installed.
"""
