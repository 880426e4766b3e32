"""
Process-tree readings (/proc, psutil), the shared sampler, samples and a run's summary.

May import: the foundations only.
"""
