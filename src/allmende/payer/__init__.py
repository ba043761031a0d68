"""The payer's side of the protocol, shared by every party that pays providers: the gateway,
an agent paying from its own wallet and a validator paying for its audits. Channels opened
and topped up on chain, credit reserved per request, cumulative vouchers signed, receipts
checked against the request and the offer before they are owed, all kept in SQLite
(`store`); and the sessions of a model served in pipeline stages (`stages`, `stage_payer`)."""
