"""Pure-Python ALEX learned index for reproducing algorithmic complexity attacks on it.

``Alex`` follows microsoft/ALEX: gapped-array data nodes placed by linear models, exponential
search, shifts to the closest gap, expansion at density 0.8, cost-model driven splits (sideways
while the parent's fanout stays within ``max_fanout``, else downward) and catastrophic-cost
checks every 64 inserts. See ``alex`` for the behaviour and the list of simplifications.
"""

from .alex import Alex, AlexConfig, AlexOutOfMemory, MemoryUsage, OpCounters
from .datanode import DataNode

__all__ = ["Alex", "AlexConfig", "AlexOutOfMemory", "DataNode", "MemoryUsage", "OpCounters"]
