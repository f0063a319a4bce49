"""benchmarks/bench_data_workers.py on CPU with the tiny preset: one fresh process's measurement, the fork server
timed when it starts and when it runs already."""


def test_it_times_the_first_batches_of_a_cold_and_a_warm_fork_server(benchmark_script):
    module = benchmark_script("bench_data_workers")
    row = module.one("tiny", workers=1, steps=2, method="forkserver")
    assert row["method"] == "forkserver" and row["shape"] == [8, 256]
    for phase in ("cold", "warm"):
        assert 0 < row[phase]["first_batch_s"] <= row[phase]["steps_s"]
    assert row["in_process_batch_s"] > 0
