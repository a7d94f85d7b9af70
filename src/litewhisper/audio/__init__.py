"""Audio in: loading and resampling files, folders and manifests of clips, built-in calibration speech."""
