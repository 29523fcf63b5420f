import CohortCore
import CohortPrivacy
import Testing

@Suite struct PrivacyAccountantTests {
  /// Reference values from Google's dp-accounting RDP accountant (0.6.0), to match within 0.5%.
  @Test(arguments: [
    (0.01, 1.1, 10_000, 1e-5, 5.6320),
    (0.005, 1.0, 5_000, 1e-9, 3.2598),
    (1.0, 2.0, 100, 1e-6, 37.4292),
  ])
  func matchesDPAccounting(q: Double, z: Double, steps: Int, delta: Double, expected: Double) throws {
    let result = try PrivacyAccountant.epsilon(
      samplingRate: q, noiseMultiplier: z, steps: steps, delta: delta)
    #expect(abs(result.epsilon - expected) / expected < 0.005, "ε = \(result.epsilon), expected \(expected)")
  }

  /// The optimal orders dp-accounting reports for the reference cases, and a few more values from
  /// it that exercise the fractional series, very large orders and the excluded orders that do not
  /// converge (q = 0.1, z = 0.7 at α ≤ 1.6).
  @Test func matchesDPAccountingOrdersAndMoreCases() throws {
    let cases: [(Double, Double, Int, Double, Double, Double)] = [
      (0.01, 1.1, 10_000, 1e-5, 5.632010670081592, 4.7),
      (0.005, 1.0, 5_000, 1e-9, 3.2597761798022473, 9.4),
      (1, 2, 100, 1e-6, 37.429216196844386, 2),
      (0.1, 0.7, 300, 1e-5, 29.009039205203884, 1.8),
      (0.001, 5, 100, 1e-5, 0.02001697375823304, 256),
      (0.5, 3, 1, 1e-3, 0.5496990444451533, 13),
    ]
    for (q, z, steps, delta, expected, order) in cases {
      let result = try PrivacyAccountant.epsilon(
        samplingRate: q, noiseMultiplier: z, steps: steps, delta: delta)
      #expect(abs(result.epsilon - expected) / expected < 1e-4, "q \(q) z \(z): ε = \(result.epsilon)")
      #expect(abs(result.order - order) < 1e-9, "q \(q) z \(z): order \(result.order), expected \(order)")
    }
  }

  @Test func ordersAreDPAccountingsGrid() {
    let orders = PrivacyAccountant.orders
    #expect(orders.count == 99 + 53 + 4)
    #expect(orders.first == 1.1)
    #expect(abs(orders[98] - 10.9) < 1e-12)
    #expect(orders[99] == 11)
    #expect(Array(orders.suffix(5)) == [63, 128, 256, 512, 1024])
  }

  @Test func edgeCasesOfOneStep() {
    #expect(PrivacyAccountant.rdp(samplingRate: 0, noiseMultiplier: 1, order: 2) == 0)
    #expect(PrivacyAccountant.rdp(samplingRate: 0.5, noiseMultiplier: 0, order: 2) == .infinity)
    #expect(PrivacyAccountant.rdp(samplingRate: 1, noiseMultiplier: 2, order: 3) == 3.0 / 8)
    // As q → 1 the subsampled formulas approach the plain Gaussian mechanism's α / (2z²).
    let almost = PrivacyAccountant.rdp(samplingRate: 1 - 1e-9, noiseMultiplier: 2, order: 3)
    #expect(abs(almost - 3.0 / 8) < 1e-6)
    let fractional = PrivacyAccountant.rdp(samplingRate: 1 - 1e-9, noiseMultiplier: 2, order: 2.5)
    #expect(abs(fractional - 2.5 / 8) < 1e-4, "\(fractional)")
    // Fractional orders interpolate between their integer neighbours (RDP is non-decreasing in α).
    let r2 = PrivacyAccountant.rdp(samplingRate: 0.01, noiseMultiplier: 1.1, order: 2)
    let r25 = PrivacyAccountant.rdp(samplingRate: 0.01, noiseMultiplier: 1.1, order: 2.5)
    let r3 = PrivacyAccountant.rdp(samplingRate: 0.01, noiseMultiplier: 1.1, order: 3)
    #expect(r2 < r25 && r25 < r3)
  }

  @Test func moreNoiseLessEpsilonMoreRoundsMoreEpsilon() throws {
    var previous = Double.infinity
    for z in [0.6, 0.8, 1.0, 1.5, 2.0, 4.0] {
      let e = try PrivacyAccountant.epsilon(samplingRate: 0.01, noiseMultiplier: z, steps: 1_000, delta: 1e-5)
      #expect(e.epsilon < previous, "z \(z): ε \(e.epsilon) not below \(previous)")
      previous = e.epsilon
    }
    previous = 0
    for steps in [1, 10, 100, 1_000, 10_000] {
      let e = try PrivacyAccountant.epsilon(samplingRate: 0.01, noiseMultiplier: 1, steps: steps, delta: 1e-5)
      #expect(e.epsilon > previous, "T \(steps): ε \(e.epsilon) not above \(previous)")
      previous = e.epsilon
    }
  }

  @Test(arguments: [(0.01, 10_000, 1e-5, 5.632), (0.005, 5_000, 1e-9, 1.0), (1.0, 100, 1e-6, 10.0)])
  func noiseMultiplierRoundTrips(q: Double, steps: Int, delta: Double, target: Double) throws {
    let z = try PrivacyAccountant.noiseMultiplier(
      samplingRate: q, steps: steps, delta: delta, targetEpsilon: target)
    let e = try PrivacyAccountant.epsilon(samplingRate: q, noiseMultiplier: z, steps: steps, delta: delta)
    #expect(e.epsilon <= target)
    #expect(abs(e.epsilon - target) / target < 0.01, "z \(z) gives ε \(e.epsilon), target \(target)")
  }

  @Test func calibrationRecoversTheFirstReferenceNoise() throws {
    let z = try PrivacyAccountant.noiseMultiplier(
      samplingRate: 0.01, steps: 10_000, delta: 1e-5, targetEpsilon: 5.6320)
    #expect(abs(z - 1.1) < 0.01, "\(z)")
  }

  @Test func invalidInputsNameTheValueAndRange() {
    func message(_ body: () throws -> Void) -> String? {
      do {
        try body()
        return nil
      } catch let error as CohortError {
        return error.code == .invalidConfiguration ? error.message : "wrong code \(error.code)"
      } catch {
        return "not a CohortError: \(error)"
      }
    }
    let cases: [(String?, [String])] = [
      (
        message {
          _ = try PrivacyAccountant.epsilon(samplingRate: 0, noiseMultiplier: 1, steps: 1, delta: 1e-5)
        }, ["sampling rate 0.0", "(0, 1]"]
      ),
      (
        message {
          _ = try PrivacyAccountant.epsilon(samplingRate: 1.5, noiseMultiplier: 1, steps: 1, delta: 1e-5)
        }, ["sampling rate 1.5", "(0, 1]"]
      ),
      (
        message {
          _ = try PrivacyAccountant.epsilon(samplingRate: 0.1, noiseMultiplier: -1, steps: 1, delta: 1e-5)
        }, ["noise multiplier -1.0", "[0, ∞)"]
      ),
      (
        message {
          _ = try PrivacyAccountant.epsilon(samplingRate: 0.1, noiseMultiplier: 1, steps: 0, delta: 1e-5)
        }, ["rounds 0", "[1, ∞)"]
      ),
      (
        message {
          _ = try PrivacyAccountant.epsilon(samplingRate: 0.1, noiseMultiplier: 1, steps: 1, delta: 0)
        }, ["delta 0.0", "(0, 1)"]
      ),
      (
        message {
          _ = try PrivacyAccountant.epsilon(samplingRate: 0.1, noiseMultiplier: 1, steps: 1, delta: 1)
        }, ["delta 1.0", "(0, 1)"]
      ),
      (
        message {
          _ = try PrivacyAccountant.noiseMultiplier(samplingRate: 2, steps: 1, delta: 1e-5, targetEpsilon: 1)
        }, ["sampling rate 2.0"]
      ),
      (
        message {
          _ = try PrivacyAccountant.noiseMultiplier(
            samplingRate: 0.1, steps: 1, delta: 1e-5, targetEpsilon: 0)
        }, ["target epsilon 0.0", "(0, ∞)"]
      ),
    ]
    for (text, fragments) in cases {
      for fragment in fragments {
        #expect(text?.contains(fragment) == true, "\(text ?? "no error"): \(fragment)")
      }
    }
  }

  @Test func noNoiseIsInfiniteEpsilon() throws {
    let e = try PrivacyAccountant.epsilon(samplingRate: 0.1, noiseMultiplier: 0, steps: 1, delta: 1e-5)
    #expect(e.epsilon == .infinity)
  }
}
