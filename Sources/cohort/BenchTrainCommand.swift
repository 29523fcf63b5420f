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
    let sgemm = Sgemm(size: sgemmSize, seed: seed)
    print(row("case", "batch", "params", "samples/s", "GFLOP/s", "sgemm GF/s", "vs sgemm"))
    print(String(repeating: "-", count: 85))
    var references: [Double] = []
    for c in cases {
      let m = measure(c, against: sgemm)
      references += m.reference
      print(
        row(
          c.name, "\(c.batchSize)", "\(c.network.layout.count)",
          format(median(m.samplesPerSecond), decimals: 0),
          format(median(m.gflops), decimals: 2), format(median(m.reference), decimals: 1),
          format(median(m.ratio), decimals: 2)))
    }
    print("\nsgemm \(sgemmSize)³ on one thread: median \(format(median(references), decimals: 1)) GFLOP/s.")
    print("Each repetition times the sgemm just before the training it is compared with.")
  }

  /// Per repetition: samples/s and GFLOP/s of whole training calls on random data, the sgemm
  /// GFLOP/s measured just before, and their ratio.
  private func measure(_ c: Case, against sgemm: Sgemm) -> (
    samplesPerSecond: [Double], gflops: [Double], reference: [Double], ratio: [Double]
  ) {
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
    let share = secondsPerCase / Double(repeats)
    let calls = max(1, Int(share * 0.8 / seconds(once)))
    var result: (samplesPerSecond: [Double], gflops: [Double], reference: [Double], ratio: [Double]) = (
      [], [], [], []
    )
    for _ in 0..<repeats {
      let reference = sgemm.gflops(seconds: share * 0.2)
      let elapsed = clock.measure {
        for _ in 0..<calls {
          _ = trainer.train(from: weights, on: data, configuration: configuration, rng: &rng)
        }
      }
      let rate = Double(calls * c.examples) / seconds(elapsed)
      let gflops = rate * c.network.flopsPerExample() / 1e9
      result.samplesPerSecond.append(rate)
      result.gflops.append(gflops)
      result.reference.append(reference)
      result.ratio.append(gflops / reference)
    }
    return result
  }

  /// A square single-thread sgemm on random matrices: the core's attainable dense arithmetic.
  private final class Sgemm {
    let n: Int
    let a: [Float]
    let b: [Float]
    var c: [Float]
    /// Seconds of one multiplication, measured once after a warm-up.
    private(set) var once = 0.0

    init(size n: Int, seed: UInt64) {
      self.n = n
      var rng = RandomStream(seed: seed, purpose: "bench-sgemm")
      a = (0..<(n * n)).map { _ in rng.uniformFloat() }
      b = (0..<(n * n)).map { _ in rng.uniformFloat() }
      c = [Float](repeating: 0, count: n * n)
      multiply()
      let start = ContinuousClock.now
      multiply()
      let (s, atto) = (ContinuousClock.now - start).components
      once = max(Double(s) + Double(atto) * 1e-18, 1e-9)
    }

    func multiply() {
      let size = Int32(n)
      c.withUnsafeMutableBufferPointer { c in
        cblas_sgemm(
          CblasRowMajor, CblasNoTrans, CblasNoTrans, size, size, size, 1, a, size, b, size, 0,
          c.baseAddress, size)
      }
    }

    /// GFLOP/s over about `seconds` of back-to-back multiplications (at least one).
    func gflops(seconds: Double) -> Double {
      let calls = max(1, Int(seconds / once))
      let start = ContinuousClock.now
      for _ in 0..<calls { multiply() }
      let (s, atto) = (ContinuousClock.now - start).components
      let elapsed = max(Double(s) + Double(atto) * 1e-18, 1e-9)
      return 2 * Double(n) * Double(n) * Double(n) * Double(calls) / elapsed / 1e9
    }
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
    let widths = [22, 6, 10, 12, 9, 11, 9]
    return zip(columns, widths).enumerated().map { i, pair in
      let (text, width) = pair
      let pad = String(repeating: " ", count: max(0, width - text.count))
      return i == 0 ? text + pad : pad + text
    }.joined(separator: " ")
  }
}
