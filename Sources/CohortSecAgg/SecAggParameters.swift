public import CohortCore
import Glibc

/// The neighbour-graph degree k and Shamir threshold t for a round of n devices, chosen from the
/// expected dropout rate δ and the fraction γ of devices that may be corrupt (colluding with the
/// server).
///
/// The failure bound is a union bound over the n devices of three events:
///
/// - (a) correctness: fewer than t of a device's k neighbours survive to unmasking, so its masks
///   cannot be removed: n · P[Bin(k, 1 − δ) < t];
/// - (b) privacy against colluding devices: t or more of a device's neighbours are corrupt and can
///   rebuild its secrets: n · P[Bin(k, γ) ≥ t] (0 when γ = 0);
/// - (c) the honest survivors' graph splits, which would expose the sum of one side: on the Harary
///   ring the graph minus the removed nodes stays connected unless k/2 consecutive ring positions
///   are all dropped or corrupt: n · (δ + γ)^(k/2); 0 for the complete graph (with at least one
///   honest survivor it cannot split).
///
/// Binomial tails are summed exactly in log space, so bounds far below 2^−1000 are still exact.
/// Larger k costs every device more key agreements and shares; smaller k risks a failed or leaky
/// round, so `choose` takes the smallest k that meets the target.
public struct SecAggParameters: Sendable, Equatable {
  /// k: neighbours per device (n − 1 is the complete graph).
  public var degree: Int
  /// t: shares needed to reconstruct a device's secrets.
  public var threshold: Int
  /// log2 of the failure bound for these k and t (−∞ when the bound is 0).
  public var failureLog2: Double

  public init(degree: Int, threshold: Int, failureLog2: Double) {
    self.degree = degree
    self.threshold = threshold
    self.failureLog2 = failureLog2
  }

  /// The smallest even k (or n − 1) for which some t makes the bound ≤ 2^−securityBits, with the
  /// t minimising the bound for that k.
  ///
  /// If no k < n − 1 meets the target, the complete graph (k = n − 1) with the t minimising the
  /// bound; its `failureLog2` may then be above −securityBits, which callers report. When two
  /// thresholds give the same bound (to 1e−9 relative; it happens exactly when δ = γ, by symmetry)
  /// the larger t is taken: a failed round can be retried, a leaked update cannot be recalled.
  ///
  /// Most k are ruled out in O(1) by term (c) or in O(log k) by single binomial terms (a tail is
  /// at least its largest term), so only the last few candidates pay the O(k) exact scan.
  public static func choose(
    count n: Int, dropoutRate: Double, corruptFraction: Double, securityBits: Int = 40
  ) -> SecAggParameters {
    precondition(n >= 1, "a round has at least one device")
    precondition((0...1).contains(dropoutRate) && (0...1).contains(corruptFraction), "rates are in [0, 1]")
    let dropout = dropoutRate
    let corrupt = corruptFraction
    let target = -Double(securityBits) * M_LN2
    let logN = log(Double(n))
    // ln of the per-device tolerance each of (a) and (b) must meet on its own.
    let logT = target - logN
    var k = 2
    while k < n - 1 {
      defer { k += 2 }
      if logN + Double(k / 2) * log(dropout + corrupt) > target { continue }
      if !mayMeet(k: k, logT: logT, dropout: dropout, corrupt: corrupt) { continue }
      let best = bestThreshold(logTotals: logTotals(n: n, k: k, dropout: dropout, corrupt: corrupt), k: k)
      if best.log <= target {
        return SecAggParameters(degree: k, threshold: best.t, failureLog2: best.log / M_LN2)
      }
    }
    let complete = n - 1
    let best = bestThreshold(
      logTotals: logTotals(n: n, k: complete, dropout: dropout, corrupt: corrupt), k: complete)
    return SecAggParameters(degree: complete, threshold: best.t, failureLog2: best.log / M_LN2)
  }

  /// log2 of the failure bound for `count` devices, degree k, threshold t, dropout rate δ and
  /// corrupt fraction γ. k ≥ n − 1 is the complete graph (no term (c)); for odd k < n − 1 term (c)
  /// uses ⌊k/2⌋.
  public static func failureLog2(
    count: Int, degree: Int, threshold: Int, dropoutRate: Double, corruptFraction: Double
  ) -> Double {
    precondition(count >= 1 && degree >= 0, "a round has at least one device")
    precondition((0...1).contains(dropoutRate) && (0...1).contains(corruptFraction), "rates are in [0, 1]")
    let k = min(degree, count - 1)
    let totals = logTotals(n: count, k: k, dropout: dropoutRate, corrupt: corruptFraction)
    return totals[min(max(threshold, 0), k + 1)] / M_LN2
  }

  /// ln of the bound for every t in 0...k+1 (index t), from one pass of prefix and suffix
  /// log-sum-exps over the two binomials' terms.
  static func logTotals(n: Int, k: Int, dropout: Double, corrupt: Double) -> [Double] {
    let survivors = LogBinomial(k: k, q: 1 - dropout, logQ: log1p(-dropout), logNotQ: log(dropout))
    let colluders = LogBinomial(k: k, q: corrupt, logQ: log(corrupt), logNotQ: log1p(-corrupt))
    // lower[t] = ln P[Bin(k, 1 − δ) < t]
    var lower = [Double](repeating: -.infinity, count: k + 2)
    for t in 1...(k + 1) { lower[t] = logAddExp(lower[t - 1], survivors.logPMF(t - 1)) }
    // upper[t] = ln P[Bin(k, γ) ≥ t]
    var upper = [Double](repeating: -.infinity, count: k + 2)
    for t in stride(from: k, through: 0, by: -1) { upper[t] = logAddExp(upper[t + 1], colluders.logPMF(t)) }
    let split: Double = k >= n - 1 ? -.infinity : (k / 2 == 0 ? 0 : Double(k / 2) * log(dropout + corrupt))
    let logN = log(Double(n))
    return (0...(k + 1)).map { t in logN + logAddExp(logAddExp(lower[t], upper[t]), split) }
  }

  /// The t in 1...max(k, 1) with the smallest bound; ties (within 1e−9 in ln) go to the larger t.
  private static func bestThreshold(logTotals: [Double], k: Int) -> (t: Int, log: Double) {
    var best = (t: 1, log: logTotals[1])
    for t in 1...max(k, 1) {
      let v = logTotals[t]
      if v == best.log || v < best.log || abs(v - best.log) <= 1e-9 * max(1, abs(best.log)) {
        best = (t, v)
      }
    }
    return best
  }

  /// Whether some t could meet the per-device tolerance T = e^logT for this k; false only when
  /// provably none can. Each tail is at least any one of its terms, so it is enough that no t has
  /// both P[Bin(k, 1 − δ) = t − 1] ≤ T and P[Bin(k, γ) = t] ≤ T. When T < 1/(k + 1), a mode's
  /// probability exceeds T, so t must lie strictly between the modes, where the first term rises
  /// and the second falls in t: two binary searches decide it.
  private static func mayMeet(k: Int, logT: Double, dropout: Double, corrupt: Double) -> Bool {
    guard logT < -log(Double(k + 1)) else { return true }
    let survivors = LogBinomial(k: k, q: 1 - dropout, logQ: log1p(-dropout), logNotQ: log(dropout))
    let colluders = LogBinomial(k: k, q: corrupt, logQ: log(corrupt), logNotQ: log1p(-corrupt))
    let slack = logT + 1e-6
    let low = Int((Double(k + 1) * corrupt).rounded(.down)) + 1
    let high = min(Int((Double(k + 1) * (1 - dropout)).rounded(.down)), k)
    guard low <= high else { return false }
    // The first t in low...high with P[Bin(k, γ) = t] ≤ T (the predicate turns true and stays).
    var a = low
    var b = high + 1
    while a < b {
      let m = (a + b) / 2
      if colluders.logPMF(m) <= slack { b = m } else { a = m + 1 }
    }
    let first = a
    // The last t in low...high with P[Bin(k, 1 − δ) = t − 1] ≤ T (true, then false).
    a = low - 1
    b = high
    while a < b {
      let m = (a + b + 1) / 2
      if survivors.logPMF(m - 1) <= slack { a = m } else { b = m - 1 }
    }
    let last = a
    return first <= high && last >= low && first <= last
  }
}

/// ln of the Bin(k, q) probability mass, with q given by ln q and ln(1 − q) so that rates near 0
/// or 1 keep their precision (log1p) and q ∈ {0, 1} is exact.
private struct LogBinomial {
  let k: Int
  let q: Double
  let logQ: Double
  let logNotQ: Double
  let logKFactorial: Double

  init(k: Int, q: Double, logQ: Double, logNotQ: Double) {
    self.k = k
    self.q = q
    self.logQ = logQ
    self.logNotQ = logNotQ
    logKFactorial = logFactorial(k)
  }

  func logPMF(_ j: Int) -> Double {
    guard j >= 0 && j <= k else { return -.infinity }
    if q <= 0 { return j == 0 ? 0 : -.infinity }
    if q >= 1 { return j == k ? 0 : -.infinity }
    return logKFactorial - logFactorial(j) - logFactorial(k - j) + Double(j) * logQ
      + Double(k - j) * logNotQ
  }
}

/// ln m! via the re-entrant log-gamma (plain `lgamma` writes the global `signgam`).
private func logFactorial(_ m: Int) -> Double {
  var sign: Int32 = 0
  return lgamma_r(Double(m) + 1, &sign)
}

/// ln(e^x + e^y) without overflow or underflow.
private func logAddExp(_ x: Double, _ y: Double) -> Double {
  if x == -.infinity { return y }
  if y == -.infinity { return x }
  let m = max(x, y)
  return m + log1p(exp(-abs(x - y)))
}

extension SecAggParameters {
  /// The degree and threshold a plan asks for with `count` devices entering the protocol: the
  /// plan's explicit values where it sets them, chosen from its dropout rate, corrupt fraction
  /// and security bits where it does not. Nil, with the reason, when the plan's explicit values
  /// cannot work with this many devices.
  public static func resolve(_ plan: SecureAggregationPlan, count n: Int) -> Result<
    SecAggParameters, SecAggError
  > {
    guard n >= 2 else {
      return .failure(SecAggError(.badConfiguration, "secure aggregation needs at least 2 devices, got \(n)"))
    }
    let degree: Int
    switch plan.graph {
    case .complete: degree = n - 1
    case .harary:
      if let k = plan.degree {
        degree = min(k, n - 1)
      } else if plan.threshold == nil {
        return .success(
          choose(
            count: n, dropoutRate: plan.dropoutRate, corruptFraction: plan.corruptFraction,
            securityBits: plan.securityBits))
      } else {
        degree =
          choose(
            count: n, dropoutRate: plan.dropoutRate, corruptFraction: plan.corruptFraction,
            securityBits: plan.securityBits
          ).degree
      }
    }
    func bound(_ t: Int) -> Double {
      failureLog2(
        count: n, degree: degree, threshold: t, dropoutRate: plan.dropoutRate,
        corruptFraction: plan.corruptFraction)
    }
    if let t = plan.threshold {
      guard t <= degree else {
        return .failure(
          SecAggError(
            .badConfiguration,
            "secure_aggregation.threshold \(t) is more than the \(degree) neighbours each of the \(n) devices has; "
              + "lower the threshold or raise the cohort size"))
      }
      return .success(SecAggParameters(degree: degree, threshold: t, failureLog2: bound(t)))
    }
    // The threshold that minimises the bound for this degree (ties: the larger, as `choose` does).
    var best = 1
    var bestBound = bound(1)
    for t in 2...max(degree, 1) {
      let b = bound(t)
      if b <= bestBound + 1e-9 * abs(bestBound) {
        best = t
        bestBound = min(b, bestBound)
      }
    }
    return .success(SecAggParameters(degree: degree, threshold: best, failureLog2: bestBound))
  }
}
