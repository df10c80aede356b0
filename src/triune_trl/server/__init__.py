"""The remote reward server and its client: the wire format (`protocol`), the FastAPI app (`app`) whose scoring
thread merges waiting requests into one worker-pool call (`batching`), the release's `.reward_server/` discovery
files (`discovery`), the async TRL reward function that sends a batch to the servers (`client`) and
`triune serve-rewards` (`cli`). docs/server.md.

May import: `errors` and `rewards` (every score the server gives is `rewards.scoring.score_text`, the in-process
router's function). `rewards` never imports this package.
"""
