"""The CPU description written into run.json, every evaluation's summary.json and the study's results: from
/proc/cpuinfo where there is one, and never an error where there is not."""

import torch

from infini_llama import host
from infini_llama.eval.records import environment as eval_environment
from infini_llama.host import busy_cores as real_busy_cores  # bound before conftest replaces it
from infini_llama.host import busy_warning, cpu_summary, cpu_times, describe_cpu
from infini_llama.train.rundir import environment as run_environment

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7B13
stepping\t: 1
flags\t\t: fpu sse sse2 avx avx2 fma bmi2 sha_ni

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: another block, not read
"""

SAPPHIRE_RAPIDS_FLAGS = "fpu avx avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8"


def test_a_zen3_host_is_described_by_family_model_and_vector_extensions(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(ZEN3)
    cpu = describe_cpu(str(info))
    assert (cpu["model_name"], cpu["vendor"]) == ("AMD EPYC 7B13", "AuthenticAMD")
    assert (cpu["family"], cpu["model"], cpu["stepping"]) == (25, 1, 1)
    assert (cpu["avx2"], cpu["avx512"], cpu["amx"]) == (True, False, False)
    assert cpu["cores"] >= 1
    summary = cpu_summary(cpu)
    assert summary.startswith("AMD EPYC 7B13 (family 25, model 1, stepping 1; AVX2, no AVX-512, no AMX)")
    assert summary.endswith(f"{cpu['cores']} cores")


def test_avx512_and_amx_are_read_from_the_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(ZEN3.replace("fpu sse sse2 avx avx2 fma bmi2 sha_ni", SAPPHIRE_RAPIDS_FLAGS))
    cpu = describe_cpu(str(info))
    assert (cpu["avx2"], cpu["avx512"], cpu["amx"]) == (True, True, True)
    assert "AVX2, AVX-512, AMX" in cpu_summary(cpu)


def test_without_cpuinfo_the_platform_module_names_the_cpu(tmp_path):
    cpu = describe_cpu(str(tmp_path / "missing"))
    assert cpu["family"] is None and cpu["avx512"] is None
    assert cpu_summary(cpu).endswith(f"{cpu['cores']} cores")  # no extensions claimed either way
    assert "AVX" not in cpu_summary(cpu)


def test_runs_and_evaluations_record_the_cpu():
    cpu = describe_cpu()
    assert run_environment(torch.device("cpu"), 1)["cpu"] == cpu
    env = eval_environment()
    assert env["cpu"] == cpu and env["device_name"] == cpu_summary(cpu)


def test_a_busy_host_is_warned_of_before_a_run_and_an_idle_one_is_not(tmp_path, monkeypatch):
    assert busy_warning(2, busy=0.9, cores=2) is None  # half the cores or less: idle enough
    warning = busy_warning(1, busy=1.6, cores=2)
    assert "(1.6 of 2 in use)" in warning and "1 CPU thread(s)" in warning and "OMP_NUM_THREADS=1" in warning
    # CPU times from /proc/stat: user nice system idle iowait irq softirq steal, per CPU; idle counts iowait.
    stat = tmp_path / "stat"
    stat.write_text("cpu  30 0 10 50 10 0 0 0 0 0\ncpu0 10 0 5 40 5 0 0 0 0 0\ncpu1 20 0 5 10 5 0 0 0 0 0\nintr 1\n")
    assert cpu_times(str(stat)) == (60, 100) and cpu_times(str(stat), cpus={1}) == (15, 40)
    assert cpu_times(str(tmp_path / "missing")) is None
    # Over the interval the two usable CPUs ran 300 ticks, 150 of them idle: one CPU's worth busy.
    samples = iter([(100, 200), (250, 500)])
    monkeypatch.setattr(host, "cpu_times", lambda *args: next(samples))
    monkeypatch.setattr(host, "usable_cpu_ids", lambda: {0, 1})
    assert real_busy_cores(interval_s=0) == 1.0
    monkeypatch.setattr(host, "cpu_times", lambda *args: None)
    assert real_busy_cores(interval_s=0) is None
    monkeypatch.setattr(host, "busy_cores", lambda: 7.0)  # what busy_warning measures when not given a number
    assert "(7.0 of 4 in use)" in busy_warning(4, cores=4)
    monkeypatch.setattr(host, "busy_cores", lambda: None)
    assert busy_warning(4) is None
