"""Analysis: complexity (params, FLOPs), peers (public implementations of the same math) and
the module benchmark."""
from .benchmark import Timing, benchmark_model, benchmark_module, benchmark_peer, run_benchmark
from .complexity import config_complexity, count_flops, count_params, strip_attention
from .peers import PEERS, Peer, build_pair, copy_weights
from .references import peers_of

__all__ = [
    'Timing', 'benchmark_model', 'benchmark_module', 'benchmark_peer', 'run_benchmark',
    'config_complexity', 'count_flops', 'count_params', 'strip_attention', 'PEERS', 'Peer',
    'build_pair', 'copy_weights', 'peers_of'
]
