"""What every engine that runs a model shares, below prune, quality and recover: the
run settings (device, dtype, tokenizer, quantisation: one record), the layer stream, device
and dtype, CPU threads, memory, the tokenizer and the text corpus."""
