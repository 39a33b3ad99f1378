"""Training the image tokenizer (VQ) and the text tokenizer; encoding data sets into code shards once."""
