// `moelab ablate`'s pieces (train/ablate.h): the grid file and its errors, the budget turned into
// each run's steps, and the statistics of the report. The runner and the report end to end:
// tests/train/ablate_cli_test.py (ctest cli.ablate).
#include <gtest/gtest.h>

#include <cmath>

#include "core/nn/model.h"
#include "tests/harness.h"
#include "train/ablate.h"
#include "train/model_info.h"

namespace moelab {
namespace {

const std::string kTiny = std::string(MOELAB_SOURCE_DIR) + "/examples/tiny.toml";

std::string grid_text(const std::string& budget, const std::string& extra = "") {
  return "[grid]\nbase = \"" + kTiny + "\"\nseeds = [3, 1]\n" + budget +
         "\nset = [\"train.batch_size=2\", \"train.seq_len=8\"]\n" + extra +
         "[arm.mla]\nset = [\"model.attention=mla\"]\n[arm.mha]\nset = [\"model.attention=mha\"]\n";
}

TEST(Ablate, ParsesAGrid) {
  const AblationGrid g = parse_grid_toml(grid_text("steps = 12"), "g.toml", "");
  EXPECT_EQ(g.base, kTiny);
  EXPECT_EQ(g.seeds, (std::vector<uint64_t>{3, 1}));
  EXPECT_EQ(g.budget, BudgetKind::Steps);
  EXPECT_EQ(g.budget_value, 12);
  EXPECT_EQ(g.overrides, (std::vector<std::string>{"train.batch_size=2", "train.seq_len=8"}));
  ASSERT_EQ(g.arms.size(), 2u);
  EXPECT_EQ(g.arms[0].name, "mla");
  EXPECT_EQ(g.arms[1].name, "mha");
  EXPECT_EQ(g.arms[1].overrides, (std::vector<std::string>{"model.attention=mha"}));
  // A relative base is relative to the grid file's folder.
  const AblationGrid rel = parse_grid_toml("[grid]\nbase = \"../tiny.toml\"\nseeds = [1]\nsteps = 1\n[arm.a]\n",
                                           "examples/ablations/x.toml", "examples/ablations");
  EXPECT_EQ(rel.base, "examples/ablations/../tiny.toml");
  EXPECT_TRUE(rel.arms[0].overrides.empty());
}

TEST(Ablate, GridErrorsNameTheFileAndKey) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {grid_text("stepz = 3"), "g.toml: [grid] unknown key 'stepz'"},
      {grid_text("steps = 3\ntokens = 100"), "exactly one budget"},
      {grid_text("seeds2 = 1"), "unknown key 'seeds2'"},
      {grid_text("steps = 2.5"), "steps = 2.5 is not a whole number"},
      {grid_text("flops = -1"), "[grid] flops = '-1', expected a number > 0"},
      {"[grid]\nseeds = [1]\nsteps = 1\n[arm.a]\n", "[grid] base is missing"},
      {"[grid]\nbase = \"x\"\nsteps = 1\n[arm.a]\n", "[grid] seeds is missing"},
      {"[grid]\nbase = \"x\"\nseeds = [1, 1]\nsteps = 1\n[arm.a]\n", "seeds repeats a seed"},
      {"[grid]\nbase = \"x\"\nseeds = [-1]\nsteps = 1\n[arm.a]\n", "'-1' is not a seed"},
      {"[grid]\nbase = \"x\"\nseeds = [1]\nsteps = 1\n", "no [arm.<name>] section"},
      {"[grid]\nbase = \"x\"\nseeds = [1]\nsteps = 1\n[arms.a]\n", "unknown section [arms]"},
      {"[grid]\nbase = \"x\"\nseeds = [1]\nsteps = 1\n[arm.a]\nsett = [\"x=1\"]\n", "[arm.a] unknown key 'sett'"},
      {"[grid]\nbase = \"x\"\nseeds = [1]\nsteps = 1\n[arm.a]\n[arm.a]\n", "arm 'a' is defined twice"},
      {"[grid]\nbase = \"x\"\nseeds = [1]\nsteps = 1\n[arm]\nset = [\"x=1\"]\n", "key 'set' in [arm]: a grid's keys"},
      {"steps = 1\n[grid]\n", "key 'steps' outside a section"},
  };
  for (const auto& [text, fragment] : cases) {
    SCOPED_TRACE(text);
    testing::expect_error([&] { parse_grid_toml(text, "g.toml", ""); }, fragment);
  }
}

// steps: as given; tokens: rounded up to whole steps of B x T x accumulation tokens; flops: the
// arm's training FLOPs per step as `moelab info` counts them (MHA costs more per token than MLA
// here, so it gets fewer steps); seconds: a time limit.
TEST(Ablate, BudgetsBecomeStepsPerArm) {
  auto plan = [](const std::string& budget) {
    return plan_ablation(parse_grid_toml(grid_text(budget), "g.toml", ""), "out");
  };
  const auto steps = plan("steps = 12");
  ASSERT_EQ(steps.size(), 4u);
  EXPECT_EQ(steps[0].arm, "mla");
  EXPECT_EQ(steps[0].seed, 3u);
  EXPECT_EQ(steps[0].dir, "out/mla/seed_3");
  EXPECT_EQ(steps[3].dir, "out/mha/seed_1");
  EXPECT_EQ(steps[3].cfg.train.seed, 1u);
  EXPECT_EQ(steps[3].cfg.train.out_dir, "out/mha/seed_1");
  for (const auto& r : steps) EXPECT_EQ(r.cfg.train.steps, 12);

  for (const auto& r : plan("tokens = 1000")) EXPECT_EQ(r.cfg.train.steps, 63);  // ceil(1000 / 16)

  const auto flops = plan("flops = 1e9");
  for (const auto& r : flops) {
    const Model m(r.cfg.model);
    const double per_step = model_info(m, 2, 8).flops_per_token * 16;
    EXPECT_EQ(r.cfg.train.steps, std::llround(1e9 / per_step)) << r.arm;
  }
  EXPECT_GT(flops[0].cfg.train.steps, flops[2].cfg.train.steps) << "MHA costs more per token than MLA";

  const auto seconds = plan("seconds = 90");
  EXPECT_EQ(seconds[0].cfg.train.time_limit_s, 90);
  EXPECT_EQ(plan("tokens = 3")[0].cfg.train.steps, 1);  // rounded up
  testing::expect_error([&] { plan("flops = 1000"); }, "a budget of 1000 flops is less than one step (");
}

// Reference p-values: Student's t table (0.05 at t = 4.3027 for 2 degrees of freedom, 2.2281 for
// 10), the Cauchy distribution (dof 1: p = 1 - 2 atan(t) / pi), and a numerical integration of the
// t density for the rest.
TEST(Ablate, StudentTAndWelch) {
  EXPECT_NEAR(student_t_two_sided_p(4.302652729911275, 2), 0.05, 1e-9);
  EXPECT_NEAR(student_t_two_sided_p(2.228138851986274, 10), 0.05, 1e-9);
  EXPECT_NEAR(student_t_two_sided_p(0.5, 1), 1 - 2 * std::atan(0.5) / M_PI, 1e-12);
  EXPECT_NEAR(student_t_two_sided_p(-0.5, 1), 1 - 2 * std::atan(0.5) / M_PI, 1e-12);
  EXPECT_NEAR(student_t_two_sided_p(1.0, 3.5), 0.38133725356353, 1e-9);
  EXPECT_DOUBLE_EQ(student_t_two_sided_p(0, 7), 1.0);

  // {1, 2, 3} vs {4, 5, 6}: t = -3 / sqrt(1/3 + 1/3), dof = 4.
  const WelchTest w = welch_t_test({1, 2, 3}, {4, 5, 6});
  EXPECT_NEAR(w.t, -3 / std::sqrt(2.0 / 3), 1e-12);
  EXPECT_NEAR(w.dof, 4, 1e-12);
  EXPECT_NEAR(w.p, 0.0213116411289, 1e-9);
  // Unequal variances: the Welch-Satterthwaite dof, by hand.
  const WelchTest u = welch_t_test({1, 2, 3, 4}, {10, 30});
  const double va = (5.0 / 3) / 4, vb = 200.0 / 2;
  EXPECT_NEAR(u.t, (2.5 - 20) / std::sqrt(va + vb), 1e-12);
  EXPECT_NEAR(u.dof, (va + vb) * (va + vb) / (va * va / 3 + vb * vb / 1), 1e-9);
  // No spread: an exact difference is certain, no difference is no evidence.
  EXPECT_EQ(welch_t_test({1, 1}, {2, 2}).p, 0);
  EXPECT_EQ(welch_t_test({1, 1}, {1, 1}).p, 1);
  testing::expect_error([] { welch_t_test({1}, {1, 2}); }, "at least 2 each");
}

}  // namespace
}  // namespace moelab
