"""The sharded prover's roles (docs/SCALING.md): front-ends publish accepted
batches to NATS JetStream, split by shard; shards keep their part of every
tree; the coordinator closes epochs at consistent cuts of the stream."""
