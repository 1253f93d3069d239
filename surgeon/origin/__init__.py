"""`surgeon origin QUANT CANDIDATE...`: which of several checkpoints a quant was made from.

Evidence per tensor, the strongest that applies (evidence.py):
1. re-encode: where gguf-py quantizes the type deterministically (F32, F16, BF16, Q8_0, Q4_0,
   Q4_1, Q5_0, Q5_1, MXFP4), the candidate's rows are quantized again and the blocks compared
   byte for byte with the quant's;
2. own scales: where the quant stores affine scales (the K-quants, the legacy types), the
   candidate is rounded with the quant's own scales and the codes that agree are counted;
3. NMSE: otherwise the candidate's NMSE against the type's measured bound (diff/quant.py).
The engine (engine.py) judges each candidate tensor by tensor and head by head, the report
(report.py) ranks them and says the answer in one line.
"""
