import ArgumentParser
import CBLAS
import CohortCore
import CohortML
import Foundation

/// `cohort bench train`: how fast one core runs local training, in samples/s and GFLOP/s, next to
/// what the same core reaches on one large sgemm. The ratio says how much of the machine's dense
/// arithmetic the training loop keeps busy; the simulator's throughput scales from it.
struct BenchTrain: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "train",
    abstract: "Measure local-training throughput on one core against a large single-thread sgemm.",
    discussion: """
      Trains logistic regression (60→10, batch 10), the 2NN (784→200→200→10, batch 10 and 64) \
      and the CNN of McMahan et al. 2017 ([1,28,28], batch 10) on seeded random data with \
      OpenBLAS limited to one thread, and reports the median of several timed repetitions. \
      GFLOP/s counts the multiply-adds of the forward and backward passes (Network.flopsPerExample).
      """)

  @Option(help: "Timed repetitions per case; the table shows their median.")
  var repeats = 5

  @Option(help: "Seconds of timed work per case, split over the repetitions.")
  var secondsPerCase = 1.5

  @Option(help: "Seed of the random data and initial weights.")
  var seed: UInt64 = 1

  @Option(help: "Size n of the n×n×n sgemm reference.")
  var sgemmSize = 1024

  func validate() throws {
    guard repeats >= 1 else { throw ValidationError("--repeats must be at least 1") }
    guard secondsPerCase > 0 else { throw ValidationError("--seconds-per-case must be positive") }
    guard sgemmSize >= 16 else { throw ValidationError("--sgemm-size must be at least 16") }
  }

  private struct Case {
    var name: String
    var network: Network
    var batchSize: Int
    /// Examples in the random dataset; one training call is one epoch over them.
    var examples: Int
  }

  func run() async throws {
    BLAS.useOneThread()
    let cases = [
      Case(
        name: "logistic 60→10", network: .logisticRegression(inputs: 60, classes: 10), batchSize: 10,
        examples: 20_000),
      Case(
        name: "2NN 784-200-200-10", network: .mlp(inputs: 784, hidden: [200, 200], classes: 10),
        batchSize: 10, examples: 2_000),
      Case(
        name: "2NN 784-200-200-10", network: .mlp(inputs: 784, hidden: [200, 200], classes: 10),
        batchSize: 64, examples: 4_096),
      Case(
        name: "CNN [1,28,28]", network: .cnn(inputShape: [1, 28, 28], classes: 10), batchSize: 10,
        examples: 200),
    ]
    let core = openblas_get_corename().map { String(cString: $0) } ?? "unknown"
    print("cohort bench train: one thread (OpenBLAS core \(core)), median of \(repeats), seed \(seed)")
    let reference = measureSgemm()
    print(
      "sgemm \(sgemmSize)³: \(format(reference, decimals: 1)) GFLOP/s (the 'vs sgemm' reference)\n")
    print(row("case", "batch", "params", "samples/s", "GFLOP/s", "vs sgemm"))
    print(String(repeating: "-", count: 80))
    for c in cases {
      let samplesPerSecond = measure(c)
      let gflops = samplesPerSecond * c.network.flopsPerExample() / 1e9
      print(
        row(
          c.name, "\(c.batchSize)", "\(c.network.layout.count)", format(samplesPerSecond, decimals: 0),
          format(gflops, decimals: 2), format(gflops / reference, decimals: 2)))
    }
  }

  /// Median samples/s of `repeats` timed runs of whole training calls on random data.
  private func measure(_ c: Case) -> Double {
    var rng = RandomStream(seed: seed, purpose: "bench-train")
    let d = c.network.inputCount
    let features = (0..<(c.examples * d)).map { _ in Float(rng.normal()) }
    let labels = (0..<c.examples).map { _ in Int32(rng.int(below: c.network.classes)) }
    let data = Dataset(
      features: features, labels: labels, featureShape: c.network.inputShape, classes: c.network.classes)
    let weights = c.network.initialWeights(&rng)
    let trainer = LocalTrainer(network: c.network)
    let configuration = TrainingConfiguration(
      epochs: 1, batchSize: c.batchSize, optimizer: OptimizerConfiguration(learningRate: 0.01))
    let clock = ContinuousClock()
    // One untimed call warms caches and sizes the timed runs to `secondsPerCase / repeats` each.
    let once = clock.measure {
      _ = trainer.train(from: weights, on: data, configuration: configuration, rng: &rng)
    }
    let calls = max(1, Int((secondsPerCase / Double(repeats)) / seconds(once)))
    var rates: [Double] = []
    for _ in 0..<repeats {
      let elapsed = clock.measure {
        for _ in 0..<calls {
          _ = trainer.train(from: weights, on: data, configuration: configuration, rng: &rng)
        }
      }
      rates.append(Double(calls * c.examples) / seconds(elapsed))
    }
    return median(rates)
  }

  /// Median GFLOP/s of an n×n×n single-thread sgemm.
  private func measureSgemm() -> Double {
    let n = sgemmSize
    var rng = RandomStream(seed: seed, purpose: "bench-sgemm")
    let a = (0..<(n * n)).map { _ in rng.uniformFloat() }
    let b = (0..<(n * n)).map { _ in rng.uniformFloat() }
    var c = [Float](repeating: 0, count: n * n)
    let clock = ContinuousClock()
    let size = Int32(n)
    func multiply() {
      c.withUnsafeMutableBufferPointer { c in
        cblas_sgemm(
          CblasRowMajor, CblasNoTrans, CblasNoTrans, size, size, size, 1, a, size, b, size, 0,
          c.baseAddress, size)
      }
    }
    let once = clock.measure { multiply() }
    let calls = max(1, Int((secondsPerCase / Double(repeats)) / seconds(once)))
    var rates: [Double] = []
    for _ in 0..<repeats {
      let elapsed = clock.measure { for _ in 0..<calls { multiply() } }
      rates.append(2 * Double(n) * Double(n) * Double(n) * Double(calls) / seconds(elapsed) / 1e9)
    }
    return median(rates)
  }

  private func seconds(_ d: Duration) -> Double {
    let (s, attoseconds) = d.components
    return max(Double(s) + Double(attoseconds) * 1e-18, 1e-9)
  }

  private func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    let mid = sorted.count / 2
    return sorted.count % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
  }

  private func format(_ value: Double, decimals: Int) -> String {
    String(format: "%.\(decimals)f", value)
  }

  private func row(_ columns: String...) -> String {
    let widths = [22, 6, 10, 14, 10, 10]
    return zip(columns, widths).enumerated().map { i, pair in
      let (text, width) = pair
      let pad = String(repeating: " ", count: max(0, width - text.count))
      return i == 0 ? text + pad : pad + text
    }.joined(separator: " ")
  }
}
