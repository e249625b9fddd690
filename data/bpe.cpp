// BPE training with incremental pair counts, and the merge loop for encoding (bpe.h).
#include "data/bpe.h"

#include <chrono>
#include <functional>
#include <queue>
#include <string>

#include "core/check.h"
#include "data/pretokenize.h"

namespace moelab {

namespace {

int32_t left_of(uint64_t pair) { return static_cast<int32_t>(pair >> 32); }
int32_t right_of(uint64_t pair) { return static_cast<int32_t>(pair & 0xFFFFFFFFu); }

}  // namespace

std::vector<BpeMerge> bpe_train(const std::vector<std::string_view>& texts, int64_t num_merges, int64_t min_count,
                                BpeTrainStats* stats) {
  MOELAB_CHECK(num_merges >= 0 && num_merges < (int64_t{1} << 30), "bpe_train: num_merges = ", num_merges,
               ", expected 0 <= num_merges < 2^30");
  MOELAB_CHECK(min_count >= 1, "bpe_train: min_count = ", min_count, ", expected >= 1");
  const auto t0 = std::chrono::steady_clock::now();
  const auto key = BpeMergeTable::key;

  // 1. The distinct pieces and how often each occurs. One-byte pieces hold no pair: skipped.
  int64_t num_words = 0;
  std::unordered_map<std::string_view, int64_t> piece_count;
  for (const std::string_view text : texts) {
    for_each_gpt2_piece(text, [&](std::string_view p) {
      ++num_words;
      if (p.size() > 1) ++piece_count[p];
    });
  }
  std::vector<std::vector<int32_t>> words;  // each word's current symbols
  std::vector<int64_t> counts;              // how often the word occurs
  words.reserve(piece_count.size());
  counts.reserve(piece_count.size());
  for (const auto& [piece, count] : piece_count) {
    words.emplace_back(piece.begin(), piece.end());
    for (int32_t& id : words.back()) id &= 0xFF;  // char -> byte value, whatever char's signedness
    counts.push_back(count);
  }

  // 2. Pair counts (with overlap, weighted by word counts) and, per pair, the words holding it.
  std::unordered_map<uint64_t, int64_t> pair_count;
  std::unordered_map<uint64_t, std::vector<int32_t>> pair_words;
  for (size_t w = 0; w < words.size(); ++w) {
    const std::vector<int32_t>& s = words[w];
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      const uint64_t p = key(s[i], s[i + 1]);
      pair_count[p] += counts[w];
      std::vector<int32_t>& ws = pair_words[p];
      if (ws.empty() || ws.back() != static_cast<int32_t>(w)) ws.push_back(static_cast<int32_t>(w));
    }
  }

  // 3. Max-heap of (count, pair); ties go to the smaller pair key, i.e. the smaller left then right
  // id, so the result never depends on hash-map order. Entries go stale when a count changes: a
  // fresh entry is pushed then, and a popped entry counts only if it still matches the map.
  struct Entry {
    int64_t count;
    uint64_t pair;
  };
  const auto lower = [](const Entry& a, const Entry& b) { return a.count != b.count ? a.count < b.count : a.pair > b.pair; };
  std::priority_queue<Entry, std::vector<Entry>, decltype(lower)> heap(lower);
  for (const auto& [p, c] : pair_count) heap.push({c, p});

  std::vector<BpeMerge> merges;
  std::vector<int64_t> last_merge_seen(words.size(), -1);
  std::unordered_map<uint64_t, int64_t> delta;  // count changes made by one merge
  for (int64_t m = 0; m < num_merges; ++m) {
    while (!heap.empty()) {
      const auto it = pair_count.find(heap.top().pair);
      if (it != pair_count.end() && it->second == heap.top().count) break;
      heap.pop();  // stale
    }
    if (heap.empty() || heap.top().count < min_count) break;
    const uint64_t best = heap.top().pair;
    heap.pop();
    const int32_t left = left_of(best), right = right_of(best), result = static_cast<int32_t>(256 + m);
    merges.push_back({left, right, result});

    // Rewrite every word that holds the pair; only those words change any count.
    const std::vector<int32_t> affected = std::move(pair_words[best]);
    pair_words.erase(best);
    delta.clear();
    for (const int32_t w : affected) {
      if (last_merge_seen[w] == m) continue;
      last_merge_seen[w] = m;
      std::vector<int32_t>& s = words[w];
      const int64_t c = counts[w];
      for (size_t i = 0; i + 1 < s.size(); ++i) delta[key(s[i], s[i + 1])] -= c;
      size_t out = 0;
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == left && s[i + 1] == right) {
          s[out++] = result;
          i += 2;
        } else {
          s[out++] = s[i++];
        }
      }
      s.resize(out);
      for (size_t i = 0; i + 1 < s.size(); ++i) {
        const uint64_t p = key(s[i], s[i + 1]);
        delta[p] += c;
        // Pairs next to the new token are new to this word; the others were indexed already.
        if (s[i] == result || s[i + 1] == result) {
          std::vector<int32_t>& ws = pair_words[p];
          if (ws.empty() || ws.back() != w) ws.push_back(w);
        }
      }
    }
    for (const auto& [p, d] : delta) {
      if (d == 0) continue;
      int64_t& count = pair_count[p];
      count += d;
      if (count <= 0) {
        // A pair of two existing tokens never reappears (merges only create pairs with the new
        // token), so its index can go.
        pair_count.erase(p);
        pair_words.erase(p);
      } else {
        heap.push({count, p});
      }
    }
    pair_count.erase(best);
  }

  if (stats) {
    stats->num_words = num_words;
    stats->num_distinct = static_cast<int64_t>(piece_count.size());
    stats->num_merges = static_cast<int64_t>(merges.size());
    stats->seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  return merges;
}

BpeMergeTable::BpeMergeTable(const std::vector<BpeMerge>& merges) {
  map_.reserve(merges.size());
  for (size_t r = 0; r < merges.size(); ++r)
    map_.emplace(key(merges[r].left, merges[r].right), Entry{static_cast<int32_t>(r), merges[r].result});
}

void bpe_merge_symbols(std::vector<int32_t>& symbols, const BpeMergeTable& table) {
  const int32_t n = static_cast<int32_t>(symbols.size());
  if (n < 2) return;
  // A doubly linked list over the symbols: a merge kills the right symbol and relinks.
  std::vector<int32_t> prev(n), next(n);
  for (int32_t i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  // Candidates (rank, position of the left symbol): lowest rank first, then leftmost.
  using Cand = std::pair<int32_t, int32_t>;
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  const auto push = [&](int32_t pos) {
    if (pos < 0 || next[pos] < 0) return;
    if (const BpeMergeTable::Entry* e = table.find(symbols[pos], symbols[next[pos]])) heap.push({e->rank, pos});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const auto [rank, pos] = heap.top();
    heap.pop();
    // Stale when the left symbol died or its pair changed since the push (ranks are unique per pair).
    if (symbols[pos] < 0 || next[pos] < 0) continue;
    const int32_t right = next[pos];
    const BpeMergeTable::Entry* e = table.find(symbols[pos], symbols[right]);
    if (!e || e->rank != rank) continue;
    symbols[pos] = e->result;
    symbols[right] = -1;
    next[pos] = next[right];
    if (next[pos] >= 0) prev[next[pos]] = pos;
    push(prev[pos]);
    push(pos);
  }
  int32_t out = 0;
  for (int32_t i = 0; i < n; ++i)
    if (symbols[i] >= 0) symbols[out++] = symbols[i];
  symbols.resize(out);
}

}  // namespace moelab
