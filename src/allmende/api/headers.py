"""HTTP headers that more than one role reads or writes."""

PIN_HEADER = "x-allmende-provider"  # serve with this provider only (an address), no failover
EVIDENCE_HEADER = "x-allmende-evidence"  # add what a validator needs to check the answer
