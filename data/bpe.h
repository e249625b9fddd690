// Byte-level BPE (Sennrich et al. 2016, as in GPT-2): training the merges and applying them.
//
// Training: split the text into pre-tokenized pieces (pretokenize.h) and count each distinct
// piece once ("words" with counts). Every word starts as its bytes (token ids 0..255). Repeatedly
// take the most frequent adjacent pair (ties: the smallest (left, right) ids), give it the next id
// 256, 257, ... and replace its occurrences in every word, left to right without overlap
// ("aaa" -> "Za"). Pairs are counted with overlap, as in every reference implementation.
// Naively each merge re-scans the whole corpus; here each merge touches only the words that
// contain the pair: a pair -> count map, a pair -> words index and a max-heap with lazy deletion
// (an entry is stale when its count no longer matches the map), so 4,000 merges on a megabyte of
// text take well under a second.
//
// Encoding a piece applies the learned merges in rank order, lowest rank first and leftmost
// first among equal ranks (a linked list of symbols and a min-heap of candidate pairs, as Hugging
// Face `tokenizers` does), which reproduces the training segmentation of every training word.
#pragma once

#include <cstdint>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace moelab {

struct BpeMerge {
  int32_t left, right;  // the two token ids that merge
  int32_t result;       // the id of the merged token
};

struct BpeTrainStats {
  int64_t num_words = 0;     // pre-tokenized pieces in the text
  int64_t num_distinct = 0;  // distinct pieces
  int64_t num_merges = 0;    // merges learned (fewer than asked when no pair reached min_count)
  double seconds = 0;        // wall time of the whole training
};

// Learns up to num_merges merges; merge i creates id 256 + i. Stops early when the most frequent
// pair occurs fewer than min_count times (a pair seen once compresses nothing worth a token).
// Several texts (documents) are split separately: no piece spans two of them.
std::vector<BpeMerge> bpe_train(const std::vector<std::string_view>& texts, int64_t num_merges, int64_t min_count = 2,
                                BpeTrainStats* stats = nullptr);
inline std::vector<BpeMerge> bpe_train(std::string_view text, int64_t num_merges, int64_t min_count = 2,
                                       BpeTrainStats* stats = nullptr) {
  return bpe_train(std::vector<std::string_view>{text}, num_merges, min_count, stats);
}

// The merges as a lookup table for encoding: (left, right) -> (rank, result).
class BpeMergeTable {
 public:
  BpeMergeTable() = default;
  explicit BpeMergeTable(const std::vector<BpeMerge>& merges);
  struct Entry {
    int32_t rank, result;
  };
  const Entry* find(int32_t left, int32_t right) const {
    const auto it = map_.find(key(left, right));
    return it == map_.end() ? nullptr : &it->second;
  }
  static uint64_t key(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }

 private:
  std::unordered_map<uint64_t, Entry> map_;
};

// Merges the symbol ids of one piece in place (initially one id per byte).
void bpe_merge_symbols(std::vector<int32_t>& symbols, const BpeMergeTable& table);

}  // namespace moelab
