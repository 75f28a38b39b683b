"""zkv's shared core: the formats and layers the boot client, the ``zkv`` command and the
gateway all use (wire protocol, keystore, crypto, zfs, key loaders, paths, errors).

Standard library plus ``cryptography`` only, and nothing runs at import time: the boot client
imports these modules from its zipapp under ``python3 -I -S``.
"""

__version__ = "0.1.0"
