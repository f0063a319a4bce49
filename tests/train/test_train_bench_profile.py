"""benchmarks/profile_gpu.py's trace reading, on kernel names seen on Hopper GPUs and on synthetic traces, so that
its table is right the first time it runs on a GPU machine."""

import json

import pytest
import torch


@pytest.fixture(scope="module")
def profile_gpu(benchmark_script):
    return benchmark_script("profile_gpu")


@pytest.mark.parametrize(
    "name, group",
    [
        ("nvjet_hsh_128x256_64x4_2x1_v_bz_coopB_NNT", "matmul"),
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1", "matmul"),
        ("cutlass3x_sm90_tensorop_s64x128x16gemm_bf16_bf16_f32_bf16_bf16_128x128x64_1x1x1_0_tnn_align8", "matmul"),
        ("triton_tem_fused_mm_3", "matmul"),
        (
            "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4> >(Flash_fwd_params)",
            "attention",
        ),
        ("cudnn_generated_fmha_sm90_bf16_causal", "attention"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x128_kernel0_0", "attention"),
        ("void cutlass::Kernel2<cutlass_80_tensorop_s1688gemm_64x128_32x3_nn_align1>(Params)", "matmul"),
        ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0", "triton fused"),
        ("triton_poi_fused__scaled_dot_product_flash_attention_backward_2", "triton fused"),
        ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
        ("Memcpy DtoD (Device -> Device)", "copy"),
        ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float> >", "eager elementwise"),
        ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", "other"),
    ],  # fmt: skip
)
def test_kernel_names_fall_in_their_group(profile_gpu, name, group):
    assert profile_gpu.kernel_group(name) == group


def test_summary_per_step_and_shares(profile_gpu):
    def kernel(name, ts, dur, cat="kernel"):
        return {"cat": cat, "name": name, "ts": ts, "dur": dur}

    trace = {"traceEvents": [
        {"cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 500},  # host events are not GPU time
        kernel("nvjet_a", 0, 300), kernel("triton_poi_fused_add_0", 300, 100), kernel("flash_bwd", 400, 200),
        kernel("Memcpy HtoD", 650, 50, cat="gpu_memcpy"),
        kernel("nvjet_a", 1000, 300), kernel("multi_tensor_apply_kernel", 1300, 100),
    ]}  # fmt: skip
    s = profile_gpu.summarize(trace, steps=2, wall_s=0.002)  # 2,000 us of wall time over 2 steps
    assert s["step_ms_profiled"] == pytest.approx(1.0)
    assert s["kernel_ms"] == pytest.approx(1.05 / 2)
    assert s["busy_share"] == pytest.approx(1050 / 2000)
    assert s["kernels_per_step"] == 3
    assert s["groups"]["matmul"] == pytest.approx({"ms": 0.3, "share": 600 / 2000})
    assert s["groups"]["attention"]["ms"] == pytest.approx(0.1)
    assert s["groups"]["optimizer"]["ms"] == pytest.approx(0.05) and s["groups"]["copy"]["ms"] == pytest.approx(0.025)
    assert s["groups"]["other"] == {"ms": 0.0, "share": 0.0}
    assert sum(g["share"] for g in s["groups"].values()) == pytest.approx(s["busy_share"])  # no overlap here
    assert [k["name"] for k in s["top_kernels"]][:2] == ["nvjet_a", "flash_bwd"]
    with pytest.raises(ValueError, match="steps >= 1"):
        profile_gpu.summarize(trace, steps=0, wall_s=1.0)


def test_a_torch_profiler_trace_reads(profile_gpu, tmp_path):
    # On CPU the trace has no GPU kernels: the format is what this checks (the key, the event fields).
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.randn(64, 64) @ torch.randn(64, 64)
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(str(path))
    trace = json.loads(path.read_text())
    assert any(e.get("name") == "aten::mm" for e in trace["traceEvents"])
    s = profile_gpu.summarize(trace, steps=1, wall_s=0.01)
    assert s["busy_share"] == 0 and s["kernels_per_step"] == 0
