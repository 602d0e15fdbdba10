"""The kopf operator that turns FineTuneJobs into trainer pods and writes their status."""
