"""One World over per-expert shards (sharded, shard), who owns which slot and shards in this process
(placement), and the shards as Ray actors (ray_cluster). The algorithm does not know it runs distributed."""
