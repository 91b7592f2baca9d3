"""Day after day: stable ids over daily snapshots and warm-started training (`plexus daily`).

from plexus.pipelines.daily.job import run_days    # the job (imports torch)
from plexus.pipelines.daily.ids import DailyConfig # the config section (light)
"""
