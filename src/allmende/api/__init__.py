"""The language the roles speak to each other and to apps: the OpenAI request and response
models and the canonical request receipts bind (`protocol`), tool calling (`tools`), the
provider's wire client (`client`), headers two roles share (`headers`), body limits (`body`)
and how errors leave a node's HTTP API (`wire`). Roles import this package, never each other."""
