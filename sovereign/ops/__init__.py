"""The operator's side: backups, verification, restore and the machine checks
(maintenance). What the CLI shows of the state lives in sovereign.state.views."""
