"""The cluster: several brokers that share one event space through NATS.

A broker given ``cluster=ClusterOptions(…)`` (``trio-realtime serve --cluster nats://…``)
attaches a :class:`Backplane` to its bus: events published on one node reach the
subscribers of every node, queue groups and requests work across nodes, and retained values
are shared. See :doc:`/cluster`. Needs the ``nats`` extra (``pip install
'trio-realtime[nats]'``).
"""

from ._backplane import Backplane as Backplane
from ._backplane import ClusterStatistics as ClusterStatistics
from ._backplane import open_backplane as open_backplane
from ._options import DEFAULT_PREFIX as DEFAULT_PREFIX
from ._options import ClusterOptions as ClusterOptions

__all__ = ["DEFAULT_PREFIX", "Backplane", "ClusterOptions", "ClusterStatistics", "open_backplane"]
