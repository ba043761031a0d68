"""HTTP headers that more than one role reads or writes."""

PIN_HEADER = "x-allmende-provider"  # serve with this provider only (an address), no failover
EVIDENCE_HEADER = "x-allmende-evidence"  # add what a validator needs to check the answer
RELAY_CLIENT_HEADER = "x-allmende-relay-client"  # the client a relay admitted a relayed request for
