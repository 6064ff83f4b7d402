# Attention alone, ms per call on prediction-sized shapes (B=32, 12 heads, head dim 32, bf16): HF-eager-style
# matmul+softmax, one baddbmm for scale+mask, fp32 softmax, SDPA flash (bf16/fp32, with/without mask).
# Behind the custom-attention and malloc rows of docs/BENCHMARKS.md (2026-11-22, 2-core AMD EPYC, torch 2.13.0):
#     python docs/experiments/attention_kernels.py
#     MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=1073741824 python docs/experiments/attention_kernels.py
import torch, time
import torch.nn.functional as F
torch.manual_seed(0)
def tm(f,n=30):
    f(); f()
    ts=[]
    for _ in range(n):
        t=time.perf_counter(); f(); ts.append(time.perf_counter()-t)
    ts.sort(); return ts[len(ts)//2]*1e3
H,D=12,32
with torch.inference_mode():
  for B,T in ((32,40),(32,64),(32,100),(32,128)):
    q,k,v=[torch.randn(B,H,T,D,dtype=torch.bfloat16) for _ in range(3)]
    keep=torch.ones(B,T,dtype=torch.bool); keep[:4,-3:]=False
    add=torch.zeros(B,1,1,T,dtype=torch.bfloat16).masked_fill(~keep[:,None,None,:], float('-inf'))
    bmask=keep[:,None,None,:]
    s=D**-0.5
    def eager():
        w=torch.matmul(q,k.transpose(2,3))*s; w=w+add; w=F.softmax(w,-1); return torch.matmul(w,v).transpose(1,2).contiguous()
    def bad():
        w=torch.baddbmm(add.expand(B,H,1,T).reshape(B*H,1,T).expand(B*H,T,T), q.reshape(B*H,T,D), k.reshape(B*H,T,D).transpose(1,2), alpha=s)
        w=torch.softmax(w,-1); return torch.bmm(w,v.reshape(B*H,T,D)).view(B,H,T,D).transpose(1,2).contiguous()
    def eager_f32sm():
        w=torch.matmul(q,k.transpose(2,3))*s; w=w+add; w=F.softmax(w,-1,dtype=torch.float32).to(q.dtype); return torch.matmul(w,v).transpose(1,2).contiguous()
    def flash_bf16():
        return F.scaled_dot_product_attention(q,k,v,attn_mask=bmask).transpose(1,2).contiguous()
    def flash_f32():
        return F.scaled_dot_product_attention(q.float(),k.float(),v.float(),attn_mask=bmask).to(q.dtype).transpose(1,2).contiguous()
    def flash_f32_nomask():
        return F.scaled_dot_product_attention(q.float(),k.float(),v.float()).to(q.dtype).transpose(1,2).contiguous()
    print(B,T, ' '.join(f"{n}={tm(f):.2f}" for n,f in (('eager',eager),('baddbmm',bad),('eager_f32sm',eager_f32sm),('flash_bf16',flash_bf16),('flash_f32',flash_f32),('flash_f32_nomask',flash_f32_nomask))))
