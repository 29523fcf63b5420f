import ArgumentParser
import CohortCore
import CohortPrivacy
import Foundation

struct PrivacyCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "privacy",
    abstract: "Differential privacy accounting for DP-FedAvg: ε from noise, or noise from ε.",
    discussion: """
      Each round samples every device independently with probability Q (the sampling rate, e.g. \
      cohort size / population), clips each update to L2 norm S, and adds Gaussian noise of \
      standard deviation Z·S to the sum (McMahan et al. 2018). The accountant tracks the Rényi DP \
      of this Poisson-subsampled Gaussian mechanism (Mironov, Talwar and Zhang 2019) at orders \
      1.1 … 1024, composes it over T rounds, and converts it to the smallest ε for the given δ, \
      as Google's dp-accounting RDP accountant does. δ should be below 1 / number of devices.

        cohort privacy epsilon --sampling-rate 0.01 --noise-multiplier 1.1 --rounds 10000 --delta 1e-5
        cohort privacy noise --sampling-rate 0.01 --rounds 10000 --delta 1e-5 --target-epsilon 2
      """,
    subcommands: [PrivacyEpsilonCommand.self, PrivacyNoiseCommand.self])
}

/// Options both privacy commands take.
struct PrivacyOptions: ParsableArguments {
  @Option(help: "Probability that a device takes part in a round, in (0, 1].")
  var samplingRate: Double

  @Option(help: "Rounds the mechanism runs (compositions), at least 1.")
  var rounds: Int

  @Option(help: "δ: the probability the ε guarantee may fail, in (0, 1); below 1 / devices.")
  var delta: Double

  @Flag(help: "Print JSON instead of text.")
  var json = false

  func validate() throws {
    guard samplingRate > 0 && samplingRate <= 1 else {
      throw ValidationError("--sampling-rate must be in (0, 1], got \(samplingRate)")
    }
    guard rounds >= 1 else { throw ValidationError("--rounds must be at least 1, got \(rounds)") }
    guard delta > 0 && delta < 1 else { throw ValidationError("--delta must be in (0, 1), got \(delta)") }
  }

  /// Prints a JSON object with sorted keys, or label–value lines.
  func emit(_ fields: [(key: String, label: String, value: Double, text: String)]) throws {
    if json {
      var object: [String: Any] = [:]
      for field in fields { object[field.key] = field.value }
      let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
      print(String(decoding: data, as: UTF8.self))
    } else {
      let table = Table(nil)
      for field in fields { table.add([field.label, field.text]) }
      print(table.rendered(), terminator: "")
    }
  }
}

struct PrivacyEpsilonCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "epsilon",
    abstract: "The (ε, δ) guarantee of T rounds at sampling rate Q and noise multiplier Z.",
    discussion: """
      Prints ε and the Rényi order α at which the conversion to (ε, δ) is tightest. A best order \
      at the edge of the grid (1.1 or 1024) means ε could be a little lower with more orders.
      """)

  @OptionGroup var options: PrivacyOptions

  @Option(help: "Noise standard deviation divided by the clip norm, above 0.")
  var noiseMultiplier: Double

  func validate() throws {
    // No noise gives no privacy (ε = ∞), which is not a useful answer to print.
    guard noiseMultiplier > 0 && noiseMultiplier.isFinite else {
      throw ValidationError("--noise-multiplier must be above 0, got \(noiseMultiplier)")
    }
  }

  func run() throws {
    let result: (epsilon: Double, order: Double)
    do throws(CohortError) {
      result = try PrivacyAccountant.epsilon(
        samplingRate: options.samplingRate, noiseMultiplier: noiseMultiplier, steps: options.rounds,
        delta: options.delta)
    } catch { throw error.exit() }
    try options.emit([
      ("sampling_rate", "sampling rate", options.samplingRate, "\(options.samplingRate)"),
      ("noise_multiplier", "noise multiplier", noiseMultiplier, "\(noiseMultiplier)"),
      ("rounds", "rounds", Double(options.rounds), Format.count(options.rounds)),
      ("delta", "delta", options.delta, "\(options.delta)"),
      ("epsilon", "epsilon", result.epsilon, Format.fixed(result.epsilon, 4)),
      ("order", "optimal order", result.order, "\(result.order)"),
    ])
  }
}

struct PrivacyNoiseCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "noise",
    abstract: "The smallest noise multiplier Z that keeps T rounds at sampling rate Q within ε.",
    discussion: """
      Calibrates Z by bisection to a relative precision of 1e-6, rounding up, so the ε it prints \
      (the guarantee at that Z) never exceeds the target.
      """)

  @OptionGroup var options: PrivacyOptions

  @Option(help: "The ε to stay within, above 0.")
  var targetEpsilon: Double

  func validate() throws {
    guard targetEpsilon > 0 && targetEpsilon.isFinite else {
      throw ValidationError("--target-epsilon must be above 0, got \(targetEpsilon)")
    }
  }

  func run() throws {
    let z: Double
    let result: (epsilon: Double, order: Double)
    do throws(CohortError) {
      z = try PrivacyAccountant.noiseMultiplier(
        samplingRate: options.samplingRate, steps: options.rounds, delta: options.delta,
        targetEpsilon: targetEpsilon)
      result = try PrivacyAccountant.epsilon(
        samplingRate: options.samplingRate, noiseMultiplier: z, steps: options.rounds, delta: options.delta)
    } catch { throw error.exit() }
    try options.emit([
      ("sampling_rate", "sampling rate", options.samplingRate, "\(options.samplingRate)"),
      ("rounds", "rounds", Double(options.rounds), Format.count(options.rounds)),
      ("delta", "delta", options.delta, "\(options.delta)"),
      ("target_epsilon", "target epsilon", targetEpsilon, "\(targetEpsilon)"),
      ("noise_multiplier", "noise multiplier", z, Format.fixed(z, 4)),
      ("epsilon", "epsilon", result.epsilon, Format.fixed(result.epsilon, 4)),
      ("order", "optimal order", result.order, "\(result.order)"),
    ])
  }
}
