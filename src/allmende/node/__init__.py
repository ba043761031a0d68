"""What every node process shares and no role owns: its SQLite state (`sqlite`), its listening
socket (`net`), and starting, watching and stopping node processes (`supervisor`)."""
