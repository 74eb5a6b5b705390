"""The operator's side: backups, verification, restore and the machine checks
(maintenance), and what the CLI shows of the state (views)."""
