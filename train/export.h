// Hugging Face export (`moelab export`, DESIGN.md "Data, training, outputs"): a checkpoint becomes a
// directory that `transformers`' DeepseekV3ForCausalLM reads,
//   <out>/config.json             model_type "deepseek_v3", every HF key of ../shared/MODEL.md with the
//                                 model's values, plus a "moelab" object (below)
//   <out>/model.safetensors       every parameter and buffer by its HF name (f32 or bf16; the
//                                 e_score_correction_bias buffers stay f32, as HF keeps them), MTP
//                                 module k as model.layers.{L+k-1}.* with copies of the weights it
//                                 shares (embed_tokens, shared_head.head = the LM head) as
//                                 DeepSeek-V3's release stores them, no lm_head.weight when tied
//   <out>/tokenizer.json          the checkpoint's tokenizer (absent when the run had none), and
//   <out>/tokenizer_config.json   PreTrainedTokenizerFast with <|endoftext|> as bos/eos, so that
//                                 AutoTokenizer runs tokenizer.json as it is
//   <out>/generation_config.json  bos/eos and plain sampling defaults
// Everything is written into "<out>.tmp" and renamed into place at the end, so a failed export never
// leaves a half directory under the real name.
//
// The "moelab" object of config.json holds every ModelConfig field whose value the HF keys do not
// carry as they are (attention, ffn, capacity_factor, the balance terms, mtp_loss_weight, ...; also
// q_lora_rank = 0, which HF writes as null), so that the HF keys overlaid with the "moelab" object
// give back the exact ModelConfig: nothing is lost.
//
// What DeepseekV3ForCausalLM cannot represent (hf_export_issues):
//   refused   attention = mha | gqa: HF's DeepseekV3 attention is MLA only, so from_pretrained would
//             drop the q_proj/k_proj/v_proj weights as unexpected and initialise the MLA ones at
//             random (a silently wrong model). ExportOptions::force exports anyway, with a warning.
//   warnings  HF loads every weight but computes something else: rms_norm_eps other than 1e-6 (HF
//             builds the MLA latents' norms with 1e-6 whatever the config says), softmax scoring (HF's router is
//             sigmoid only), capacity_factor > 0 (HF routes dropless), groups without the bias
//             (moelab scores a group by its best expert, V2's group_limited_greedy; HF by the sum of
//             its top 2), groups of one expert (HF takes the top 2 of each group).
//   notes     exact, but worth knowing: MTP modules are stored yet not built by HF (from_pretrained
//             lists them as unexpected); a run without the aux-loss-free bias gets zero
//             e_score_correction_bias buffers (HF's router always adds one); no shared experts (HF
//             builds a zero-width shared MLP, whose missing weights it reports); no tokenizer.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "train/checkpoint.h"

namespace moelab {

struct ExportOptions {
  DType dtype = DType::F32;  // f32 or bf16 (round to nearest even); the router bias stays f32
  bool force = false;        // export even what HF cannot load (attention = mha | gqa), with a warning
  bool overwrite = false;    // replace an existing non-empty output directory
};

struct ExportSummary {
  std::string out_dir;
  std::string checkpoint;              // the directory exported
  int64_t step = 0;                    // its training step
  DType dtype = DType::F32;
  int64_t tensors = 0;                 // in model.safetensors
  int64_t parameters = 0;              // their elements (not counting the MTP modules' copies)
  uint64_t bytes = 0;                  // model.safetensors' size
  std::vector<std::string> files;      // written, in order
  std::vector<std::string> warnings;   // what DeepseekV3ForCausalLM would compute differently
  std::vector<std::string> notes;      // exact, but worth knowing
};

// What HF's DeepseekV3ForCausalLM makes of a model config: `refusals` block the export (unless
// forced), `warnings` and `notes` as above. Each line names the config key and its value.
struct HfExportIssues {
  std::vector<std::string> refusals, warnings, notes;
};
HfExportIssues hf_export_issues(const ModelConfig& cfg);

// The HF config keys written from the model config (MODEL.md's and the DeepSeek-V3 release's),
// sorted; config.json also has model_type, architectures, torch_dtype, bos/eos/pad_token_id and
// "moelab".
const std::vector<std::string>& hf_config_keys();

// config.json: eot_id is the tokenizer's <|endoftext|> id (-1: none, bos/eos are null).
nlohmann::json hf_config_json(const ModelConfig& cfg, DType dtype, int32_t eot_id);
nlohmann::json hf_generation_config_json(int32_t eot_id);
nlohmann::json hf_tokenizer_config_json(const Tokenizer& tok, int64_t max_len);

// Writes the HF directory of a loaded checkpoint. Throws (naming the key, file or directory) on a
// refused config, an existing non-empty out_dir without overwrite, or a write error; then neither
// out_dir nor "<out_dir>.tmp" is left behind (an existing out_dir is untouched).
ExportSummary export_hf(const LoadedCheckpoint& ck, const std::string& out_dir, const ExportOptions& opt = {});
inline ExportSummary export_hf(const LoadedCheckpoint& ck, const std::string& out_dir, DType dtype) {
  ExportOptions opt;
  opt.dtype = dtype;
  return export_hf(ck, out_dir, opt);
}

// resolve_checkpoint + load_checkpoint + export_hf.
ExportSummary export_checkpoint(const std::string& ckpt_or_run_dir, const std::string& out_dir,
                                const ExportOptions& opt = {});

}  // namespace moelab
