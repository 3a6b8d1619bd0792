"""``ceilometer-cmt guard``: caps a noisy neighbour's L3 share with CAT.

Plain Python, no OpenStack imports: :mod:`.cbm` (cache bit masks and
schemata lines) and :mod:`.policy` (the per-cycle decision).  The guard sits
above the backends and below privsep in the import layers.
"""
