"""Generation with vLLM: what the trainer sends vLLM and keeps of its log-probs (`prompts`), weight sync into a
colocated vLLM on its CPU platform (`cpu_sync`), the `triune_http` weight-transfer backend that vLLM loads as a
`vllm.general_plugins` entry point (`http_weights`), the trainer's server client (`client`),
`triune vllm-serve` (`serve`) and the bearer token that guards its routes (`auth`, an ASGI middleware the server loads).
docs/scaling.md tells when each is used.

May import: the root's `checks` and `errors`. Never `trainer`, `runs` or `cli`: the trainer builds on this package,
and `http_weights` runs inside vLLM's worker processes, which must not import the trainer. Imports nothing heavy at
package import (vLLM loads `http_weights` in every process).
"""
