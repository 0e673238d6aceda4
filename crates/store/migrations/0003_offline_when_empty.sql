-- A host drained with "then offline" remembers it across restarts: who asked, while pending.
ALTER TABLE host_state ADD COLUMN offline_when_empty TEXT;
