"""Many files, one or more machines: `hypersr batch` (job.py: the job record; local.py: one machine)."""
