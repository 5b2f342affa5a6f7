"""Jobs: the fair queue and its worker, the job record, the journal that survives restarts, the pause/step gate."""
