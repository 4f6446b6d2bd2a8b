"""Where datasets downloaded by hand are looked for when none is configured (both tasks' sources)."""
from __future__ import annotations

import os


def default_manual_root() -> str:
  """TFDS's conventional place for manually downloaded datasets (overridable by $JAXMATCH_DATA)."""
  return os.environ.get('JAXMATCH_DATA', os.path.join(os.path.expanduser('~'), 'tensorflow_datasets',
                                                      'downloads', 'manual'))
