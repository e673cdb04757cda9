"""The spool's folders and the modes the drop box shares with a front end.

The layout itself, and the protocol on it, are drawn in spool.py's docstring; the drop
box's modes in dropbox.py's.
"""

from __future__ import annotations

import stat

FOLDERS = ("incoming", "tmp", "new", "deferred", "active", "done", "quarantine", "rejected",
           "outbox", "keys", "locks")
SUFFIX = ".task"

HOME_MODE = 0o710
SPOOL_MODE = 0o710
INCOMING_MODE = 0o1730 | stat.S_ISGID
OUTBOX_MODE = 0o710 | stat.S_ISGID
SHARED_FILE_MODE = 0o640
