import ArgumentParser
import CohortCore
import CohortSecAgg
import Foundation

/// `cohort bench secagg`: device time, server time and bytes per device of one secure-aggregation
/// round, for the complete graph of Bonawitz et al. 2017 and the SecAgg+ graph of Bell et al. 2020,
/// next to the figures Bonawitz et al. report and the targets the project set.
struct BenchSecAgg: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "secagg",
    abstract: "Measure secure aggregation: device time, server time and bytes per device, on one core.",
    discussion: """
      Runs whole semi-honest rounds in memory (InMemorySecAggRound), every party on this one \
      thread, for each graph × devices × dropout rate, plus (unless --skip-large) SecAgg+ with \
      --large-devices devices at 10% dropout. Dropped devices leave after sharing keys and before \
      sending their masked input, the expensive case: the server then reconstructs each one's \
      masking key and regenerates its pairwise mask with every surviving neighbour. \
      Device time is the sum of a device's work over all steps (median and p90 over the devices \
      that finished); server time is the sum of all server work. Inputs are seeded random words; \
      every unmasked sum is checked against the sum of the survivors' inputs, computed separately, \
      and a mismatch fails the command. Timings are never pass/fail: the table shows ratios to \
      Bonawitz et al.'s figures (500 devices, 100,000 entries) and to the targets. \
      Build with -c release; the default run takes several minutes.
      """)

  enum Graph: String, ExpressibleByArgument, CaseIterable {
    case complete, harary, both
  }

  @Option(parsing: .upToNextOption, help: "Devices n per round (one or more).")
  var devices: [Int] = [500]

  @Option(help: "Entries (32-bit words) per input vector.")
  var length = 100_000

  @Option(parsing: .upToNextOption, help: "Dropout rates (one or more), in [0, 1).")
  var dropout: [Double] = [0, 0.1, 0.3]

  @Option(help: "complete (SecAgg, k = n − 1), harary (SecAgg+, chosen k) or both.")
  var graph: Graph = .both

  @Option(help: "Ring bits b (inputs live in Z/2^b); default 16 + ⌈log2 n⌉, at most 32.")
  var ringBits: Int?

  @Option(help: "γ: fraction of devices that may collude with the server, for choosing k and t.")
  var corruptFraction = 0.05

  @Option(help: "The failure bound k and t must meet: 2^−bits.")
  var securityBits = 40

  @Flag(help: "Skip the large SecAgg+ round (--large-devices devices, 10% dropout).")
  var skipLarge = false

  @Option(help: "Devices of the large SecAgg+ round.")
  var largeDevices = 10_000

  @Option(help: "Entries of the large SecAgg+ round (default: --length).")
  var largeLength: Int?

  @Option(help: "Seed of device secrets, inputs, dropouts and the graph order.")
  var seed: UInt64 = 1

  @Flag(help: "Print JSON instead of text.")
  var json = false

  func validate() throws {
    guard !devices.isEmpty, devices.allSatisfy({ $0 >= 3 }) else {
      throw ValidationError("--devices must be at least 3")
    }
    guard length >= 1 else { throw ValidationError("--length must be at least 1") }
    guard !dropout.isEmpty, dropout.allSatisfy({ (0..<1).contains($0) }) else {
      throw ValidationError("--dropout rates must be in [0, 1)")
    }
    if let ringBits, !(1...32).contains(ringBits) { throw ValidationError("--ring-bits must be 1...32") }
    guard (0..<1).contains(corruptFraction) else {
      throw ValidationError("--corrupt-fraction must be in [0, 1)")
    }
    guard securityBits >= 1 else { throw ValidationError("--security-bits must be at least 1") }
    guard largeDevices >= 3 else { throw ValidationError("--large-devices must be at least 3") }
    if let largeLength, largeLength < 1 { throw ValidationError("--large-length must be at least 1") }
  }

  /// One round to measure.
  struct Case {
    var complete: Bool
    var count: Int
    var length: Int
    var dropout: Double
    var graphName: String { complete ? "SecAgg" : "SecAgg+" }
  }

  /// What one round measured.
  struct Result {
    var c: Case
    var degree: Int
    var threshold: Int
    var failureLog2: Double
    var ringBits: Int
    var dropped: Int
    var survivors: Int
    var deviceMedian: Double
    var deviceP90: Double
    var serverSeconds: Double
    var serverSteps: [SecAggServer.Step: Double]
    /// Masks the server expands while unmasking: one self mask per survivor, one pairwise mask per
    /// (dropped device, surviving neighbour).
    var serverMasks: Int
    var bytesUp: Int
    var bytesDown: Int
    var wallSeconds: Double
    var exact: Bool
    var failure: String?
  }

  /// Bonawitz et al. 2017 (Figure 6 and Table 2), 500 devices, 100,000 entries, one core.
  static let paperDeviceSeconds = 0.85
  static let paperServerSeconds: [Double: Double] = [0: 2, 0.1: 62, 0.3: 143]
  /// The issue's targets for SecAgg+ at n = 500, 100,000 entries, one core.
  static let targetDeviceSeconds = 0.05
  static let targetServerSeconds = 2.0
  static let targetServerDropout = 0.3

  func run() async throws {
    var cases: [Case] = []
    for n in devices {
      for rate in dropout {
        if graph != .harary { cases.append(Case(complete: true, count: n, length: length, dropout: rate)) }
        if graph != .complete { cases.append(Case(complete: false, count: n, length: length, dropout: rate)) }
      }
    }
    if !skipLarge {
      cases.append(Case(complete: false, count: largeDevices, length: largeLength ?? length, dropout: 0.1))
    }
    let base = Baseline.measure(length: length)
    let start = ContinuousClock.now
    Console.error(
      "cohort bench secagg: \(cases.count) rounds, one thread, seed \(seed), γ = \(corruptFraction), "
        + "2^−\(securityBits) failure bound")
    var results: [Result] = []
    for (i, c) in cases.enumerated() {
      let r = measure(c, label: "[\(i + 1)/\(cases.count)]", since: start)
      results.append(r)
    }
    let total = (ContinuousClock.now - start) / .seconds(1)
    Console.error("done in \(Format.fixed(total, 1)) s")
    if json {
      try printJSON(results, total: total, base: base)
    } else {
      printText(results, total: total, base: base)
    }
    let failed = results.filter { !$0.exact }
    if !failed.isEmpty {
      for r in failed {
        Console.error(
          "error: \(r.c.graphName) n = \(r.c.count), dropout \(r.c.dropout): \(r.failure ?? "the sum is wrong")"
        )
      }
      throw ExitCode.failure
    }
  }

  // MARK: Measuring

  /// k and t for a case: SecAgg+ from `SecAggParameters.choose`; the complete graph with the t
  /// minimising the failure bound (ties to the larger t, as `choose` does).
  func parameters(_ c: Case) -> SecAggParameters {
    let rate = max(c.dropout, 0.01)
    if !c.complete {
      return SecAggParameters.choose(
        count: c.count, dropoutRate: rate, corruptFraction: corruptFraction, securityBits: securityBits)
    }
    let k = c.count - 1
    var best = SecAggParameters(degree: k, threshold: 1, failureLog2: .infinity)
    for t in 1...k {
      let bound = SecAggParameters.failureLog2(
        count: c.count, degree: k, threshold: t, dropoutRate: rate, corruptFraction: corruptFraction)
      if bound <= best.failureLog2 + 1e-9 * max(1, abs(bound)) {
        best = SecAggParameters(degree: k, threshold: t, failureLog2: bound)
      }
    }
    return best
  }

  func measure(_ c: Case, label: String, since start: ContinuousClock.Instant) -> Result {
    let chosen = parameters(c)
    let bits = ringBits ?? min(32, 16 + Int(ceil(log2(Double(c.count)))))
    let configuration = SecAggConfiguration(
      round: 1, count: c.count, degree: chosen.degree, threshold: chosen.threshold,
      graphSeed: bytes(purpose: "graph", device: 0), vectorLength: c.length, ringBits: bits)
    let ringMask: UInt32 = bits >= 32 ? .max : (1 << UInt32(bits)) - 1

    // Exactly round(rate · n) devices, drawn by a seeded shuffle, drop before the masked input.
    var rng = RandomStream(seed: seed, purpose: "bench-secagg-dropout", round: c.count, device: c.length)
    let droppedCount = Int((c.dropout * Double(c.count)).rounded())
    let all = (1...c.count).map { SecAggIndex($0) }
    let dropped = Set(all.shuffled(using: &rng).prefix(droppedCount))
    let expectedSurvivors = all.filter { !dropped.contains($0) }

    Console.error(
      "\(label) \(c.graphName) n = \(Format.count(c.count)), \(Format.count(c.length)) entries, "
        + "dropout \(Format.fixed(c.dropout, 2)) (\(droppedCount) devices): k = \(chosen.degree), "
        + "t = \(chosen.threshold), failure ≤ 2^\(Format.fixed(chosen.failureLog2, 1)), b = \(bits)")

    let length = c.length
    let seed = self.seed
    var deviceTime = [Duration](repeating: .zero, count: c.count + 1)
    var serverTime: [SecAggServer.Step: Duration] = [:]
    var expected = [UInt32](repeating: 0, count: length)
    var asked: [SecAggIndex] = []
    var masked = 0
    let every = max(1, c.count / 10)
    let roundStart = ContinuousClock.now
    var lastProgress = roundStart
    let outcome = InMemorySecAggRound(configuration: configuration).run(
      seed: { bytes(purpose: "device", device: Int($0)) },
      input: { index in
        // The expected sum is folded here from the plaintext inputs, apart from the protocol.
        var r = RandomStream(seed: seed, purpose: "bench-secagg-input", device: Int(index))
        var words = [UInt32](repeating: 0, count: length)
        for i in 0..<length {
          words[i] = UInt32(truncatingIfNeeded: r.next()) & ringMask
          expected[i] &+= words[i]
        }
        asked.append(index)
        return words
      },
      dropsBefore: { step, index in step == .maskedInput && dropped.contains(index) },
      timed: { party, step, work in
        let t0 = ContinuousClock.now
        work()
        let elapsed = ContinuousClock.now - t0
        switch party {
        case .device(let i):
          deviceTime[Int(i)] += elapsed
          if step == .maskedInput {
            masked += 1
            // Progress every tenth of the devices, at most every 10 s.
            if masked % every == 0, ContinuousClock.now - lastProgress >= .seconds(10) {
              lastProgress = ContinuousClock.now
              Console.error(
                "  masked inputs \(Format.count(masked))/\(Format.count(expectedSurvivors.count)), "
                  + "\(Format.fixed((ContinuousClock.now - roundStart) / .seconds(1), 1)) s into the round")
            }
          }
        case .server:
          serverTime[step, default: .zero] += elapsed
        }
      })
    let wall = (ContinuousClock.now - roundStart) / .seconds(1)

    var failure: String? = nil
    if let reason = outcome.abandonedReason {
      failure = "the round was abandoned: \(reason)"
    } else if outcome.survivors != expectedSurvivors || asked.sorted() != expectedSurvivors {
      failure =
        "\(outcome.survivors.count) survivors, \(asked.count) masked inputs; \(expectedSurvivors.count) expected"
    } else if let sum = outcome.sum {
      for i in expected.indices { expected[i] &= ringMask }
      if sum != expected {
        let wrong = zip(sum, expected).filter { $0 != $1 }.count
        failure = "the unmasked sum differs from the survivors' inputs in \(wrong) of \(length) entries"
      }
    } else {
      failure = "the round finished without a sum"
    }

    let graph = NeighbourGraph(count: c.count, degree: configuration.degree, seed: configuration.graphSeed)
    let pairwise = dropped.reduce(0) { total, d in
      total + graph.neighbours(of: d).filter { !dropped.contains($0) }.count
    }
    let survivorTimes = expectedSurvivors.map { deviceTime[Int($0)] / .seconds(1) }.sorted()
    let serverSteps = serverTime.mapValues { $0 / .seconds(1) }
    let result = Result(
      c: c, degree: configuration.degree, threshold: chosen.threshold, failureLog2: chosen.failureLog2,
      ringBits: bits, dropped: droppedCount, survivors: expectedSurvivors.count,
      deviceMedian: quantile(survivorTimes, 0.5), deviceP90: quantile(survivorTimes, 0.9),
      serverSeconds: serverSteps.values.reduce(0, +), serverSteps: serverSteps,
      serverMasks: expectedSurvivors.count + pairwise,
      bytesUp: medianInt(expectedSurvivors.map { outcome.deviceBytesSent[$0] ?? 0 }),
      bytesDown: medianInt(expectedSurvivors.map { outcome.deviceBytesReceived[$0] ?? 0 }),
      wallSeconds: wall, exact: failure == nil, failure: failure)
    Console.error(
      "  \(failure == nil ? "exact" : "WRONG: \(failure!)"): device median \(Format.fixed(result.deviceMedian, 4)) s, "
        + "server \(Format.fixed(result.serverSeconds, 3)) s, round \(Format.fixed(wall, 1)) s, "
        + "\(Format.fixed((ContinuousClock.now - start) / .seconds(1), 1)) s elapsed")
    return result
  }

  /// 32 seeded bytes: a device's root secret or the graph seed. Benchmark secrets only.
  func bytes(purpose: String, device: Int) -> [UInt8] {
    var r = RandomStream(seed: seed, purpose: "bench-secagg-\(purpose)", device: device)
    var out: [UInt8] = []
    out.reserveCapacity(32)
    for _ in 0..<4 { withUnsafeBytes(of: r.next().littleEndian) { out.append(contentsOf: $0) } }
    return out
  }

  /// The q-quantile of sorted values (nearest rank).
  func quantile(_ sorted: [Double], _ q: Double) -> Double {
    guard !sorted.isEmpty else { return 0 }
    if q == 0.5 {
      let m = sorted.count / 2
      return sorted.count % 2 == 1 ? sorted[m] : (sorted[m - 1] + sorted[m]) / 2
    }
    return sorted[min(sorted.count - 1, max(0, Int((q * Double(sorted.count)).rounded(.up)) - 1))]
  }

  func medianInt(_ values: [Int]) -> Int {
    let s = values.sorted()
    return s.isEmpty ? 0 : s[s.count / 2]
  }

  // MARK: Output

  /// Whether a row is the paper's setting (500 devices, 100,000 entries).
  static func isPaperSetting(_ c: Case) -> Bool { c.count == 500 && c.length == 100_000 }

  /// What the server's arithmetic costs on this machine, measured in the same run: the libsodium
  /// ChaCha20 keystream alone, the keystream added into a vector (`SecAggCrypto.addMask`), and
  /// one X25519 agreement. The floor of a round's server time is its masks at the keystream rate
  /// plus one agreement per pairwise mask: no implementation with these primitives goes below it.
  struct Baseline {
    var keystreamGBs: Double
    var maskGBs: Double
    var agreementSeconds: Double

    static func measure(length: Int) -> Baseline {
      let clock = ContinuousClock()
      let key = [UInt8](repeating: 7, count: 32)
      let repetitions = 200
      func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
      }
      func median(_ work: () -> Void) -> Double {
        var samples: [Double] = []
        for _ in 0..<5 { samples.append(seconds(clock.measure(work))) }
        return samples.sorted()[2]
      }
      let bytes = Double(4 * length * repetitions)
      let keystream = median {
        for _ in 0..<repetitions { _ = SecAggCrypto.stream(key: key, count: 4 * length) }
      }
      var vector = [UInt32](repeating: 0, count: length)
      let mask = median {
        for _ in 0..<repetitions { SecAggCrypto.addMask(key: key, sign: 1, into: &vector) }
      }
      let a = SecAggCrypto.keyAgreementPair(seed: [UInt8](repeating: 1, count: 32))
      let b = SecAggCrypto.keyAgreementPair(seed: [UInt8](repeating: 2, count: 32))
      let agreements = 2000
      let agree = median {
        for _ in 0..<agreements {
          _ = SecAggCrypto.agree(
            secretKey: a.secretKey, ownPublicKey: a.publicKey, peerPublicKey: b.publicKey, ownIndex: 1,
            peerIndex: 2)
        }
      }
      return Baseline(
        keystreamGBs: bytes / keystream / 1e9, maskGBs: bytes / mask / 1e9,
        agreementSeconds: agree / Double(agreements))
    }

    /// The least server time a round can take: every mask's keystream, every pairwise mask's
    /// agreement.
    func floor(masks: Int, selfMasks: Int, length: Int) -> Double {
      Double(masks) * Double(4 * length) / (keystreamGBs * 1e9) + Double(masks - selfMasks) * agreementSeconds
    }
  }

  func printText(_ results: [Result], total: Double, base: Baseline) {
    print(
      "cohort bench secagg: one thread, semi-honest, seed \(seed), γ = \(Format.fixed(corruptFraction, 2)), "
        + "failure bound 2^−\(securityBits); \(Format.fixed(total, 1)) s in all")
    let table = Table([
      "graph", "n", "length", "dropout", "k", "t", "log2 fail", "b", "device s (median)", "device s (p90)",
      "server s", "bytes up", "bytes down", "up / input", "sum",
    ])
    for r in results {
      table.add([
        r.c.graphName, "\(r.c.count)", "\(r.c.length)", Format.fixed(r.c.dropout, 2), "\(r.degree)",
        "\(r.threshold)", Format.fixed(r.failureLog2, 1), "\(r.ringBits)", Format.fixed(r.deviceMedian, 4),
        Format.fixed(r.deviceP90, 4), Format.fixed(r.serverSeconds, 3), Format.bytes(r.bytesUp),
        Format.bytes(r.bytesDown), Format.fixed(Double(r.bytesUp) / Double(4 * r.c.length), 3),
        r.exact ? "exact" : "WRONG",
      ])
    }
    print(table.rendered(), terminator: "")

    print("")
    print(
      "baseline, same run: ChaCha20 keystream \(Format.fixed(base.keystreamGBs, 2)) GB/s; keystream added "
        + "into a vector \(Format.fixed(base.maskGBs, 2)) GB/s (\(Format.fixed(base.maskGBs / base.keystreamGBs, 2)) "
        + "of it); X25519 agreement \(Format.fixed(base.agreementSeconds * 1e6, 1)) µs")
    print("server seconds by step; floor = masks at the keystream rate + one agreement per pairwise mask")
    let steps: [SecAggServer.Step] = [.advertiseKeys, .shareKeys, .maskedInput, .unmasking]
    let stepTable = Table(
      ["graph", "n", "dropout"] + steps.map(\.description) + [
        "masks expanded", "GB/s while unmasking", "floor s", "server / floor",
      ])
    for r in results {
      let unmasking = r.serverSteps[.unmasking] ?? 0
      let gigabytes = Double(r.serverMasks) * Double(4 * r.c.length) / 1e9
      stepTable.add(
        [r.c.graphName, "\(r.c.count)", Format.fixed(r.c.dropout, 2)]
          + steps.map { Format.fixed(r.serverSteps[$0] ?? 0, 3) }
          + [
            Format.count(r.serverMasks), unmasking > 0 ? Format.fixed(gigabytes / unmasking, 2) : "-",
            Format.fixed(base.floor(masks: r.serverMasks, selfMasks: r.survivors, length: r.c.length), 3),
            Format.fixed(
              r.serverSeconds / base.floor(masks: r.serverMasks, selfMasks: r.survivors, length: r.c.length),
              2),
          ])
    }
    print(stepTable.rendered(), terminator: "")

    let paper = results.filter { Self.isPaperSetting($0.c) }
    guard !paper.isEmpty else { return }
    print("")
    print(
      "against Bonawitz et al. 2017 (n = 500, 100,000 entries: device \(Self.paperDeviceSeconds) s; "
        + "server 2 s at 0%, 62 s at 10%, 143 s at 30% dropout) and the SecAgg+ targets "
        + "(device ≤ \(Self.targetDeviceSeconds) s; server ≤ \(Self.targetServerSeconds) s at 30% dropout); "
        + "ratios are measured / reference")
    let comparison = Table([
      "graph", "dropout", "device s", "paper", "ratio", "target", "ratio", "server s", "paper", "ratio",
      "target", "ratio",
    ])
    for r in paper {
      let paperServer = Self.paperServerSeconds[r.c.dropout]
      let deviceTarget: Double? = r.c.complete ? nil : Self.targetDeviceSeconds
      let serverTarget: Double? =
        !r.c.complete && r.c.dropout == Self.targetServerDropout ? Self.targetServerSeconds : nil
      func ratio(_ x: Double, _ ref: Double?) -> String { ref.map { Format.fixed(x / $0, 3) } ?? "-" }
      comparison.add([
        r.c.graphName, Format.fixed(r.c.dropout, 2), Format.fixed(r.deviceMedian, 4),
        Format.fixed(Self.paperDeviceSeconds, 2), ratio(r.deviceMedian, Self.paperDeviceSeconds),
        deviceTarget.map { Format.fixed($0, 2) } ?? "-", ratio(r.deviceMedian, deviceTarget),
        Format.fixed(r.serverSeconds, 3), paperServer.map { Format.fixed($0, 0) } ?? "-",
        ratio(r.serverSeconds, paperServer), serverTarget.map { Format.fixed($0, 1) } ?? "-",
        ratio(r.serverSeconds, serverTarget),
      ])
    }
    print(comparison.rendered(), terminator: "")
  }

  func printJSON(_ results: [Result], total: Double, base: Baseline) throws {
    let rows: [[String: Any]] = results.map { r in
      var row: [String: Any] = [
        "graph": r.c.complete ? "complete" : "harary", "devices": r.c.count, "length": r.c.length,
        "dropout": r.c.dropout, "dropped": r.dropped, "survivors": r.survivors, "degree": r.degree,
        "threshold": r.threshold, "ring_bits": r.ringBits,
        "device_seconds_median": r.deviceMedian, "device_seconds_p90": r.deviceP90,
        "server_seconds": r.serverSeconds, "server_masks": r.serverMasks,
        "server_seconds_by_step": Dictionary(
          uniqueKeysWithValues: r.serverSteps.map { ($0.key.description, $0.value) }),
        "bytes_up_median": r.bytesUp, "bytes_down_median": r.bytesDown,
        "bytes_up_per_input_byte": Double(r.bytesUp) / Double(4 * r.c.length),
        "round_wall_seconds": r.wallSeconds, "exact": r.exact,
        "server_floor_seconds": base.floor(masks: r.serverMasks, selfMasks: r.survivors, length: r.c.length),
      ]
      // JSON has no infinities: a bound of 0 is reported as null.
      row["failure_log2"] = r.failureLog2.isFinite ? r.failureLog2 : NSNull()
      if let paper = Self.paperServerSeconds[r.c.dropout], Self.isPaperSetting(r.c) {
        row["paper_server_seconds"] = paper
        row["paper_device_seconds"] = Self.paperDeviceSeconds
      }
      if let failure = r.failure { row["failure"] = failure }
      return row
    }
    let object: [String: Any] = [
      "seed": NSNumber(value: seed), "corrupt_fraction": corruptFraction, "security_bits": securityBits,
      "seconds": total, "rounds": rows,
      "baseline": [
        "keystream_gb_per_second": base.keystreamGBs, "mask_gb_per_second": base.maskGBs,
        "agreement_seconds": base.agreementSeconds,
      ],
      "targets": [
        "harary_device_seconds": Self.targetDeviceSeconds,
        "harary_server_seconds_at_30_percent": Self.targetServerSeconds,
      ],
    ]
    let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    print(String(decoding: data, as: UTF8.self))
  }
}
