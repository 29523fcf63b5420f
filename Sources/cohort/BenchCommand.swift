import ArgumentParser

struct BenchCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "bench",
    abstract: "The performance suite. Build with -c release; prints figures and ratios.",
    discussion: """
      Each benchmark measures its baseline in the same run and reports medians and ratios to it, \
      because shared machines are noisy. Record results in BENCHMARKS.md with the command used.
      """,
    subcommands: [BenchTrain.self, BenchSimulate.self, BenchSecAgg.self])
}
