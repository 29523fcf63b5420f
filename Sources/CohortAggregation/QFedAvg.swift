import CohortCore
import Foundation

/// q-FedAvg (Li, Sanjabi, Beirami, Smith, "Fair Resource Allocation in Federated Learning",
/// ICLR 2020, Algorithm 2). With L the Lipschitz estimate (1/learning rate in the authors' code),
/// each device k, with loss F_k = F_k(wᵗ) at the global model and local model w̄_k, gives
///
///     Δw_k = L·(wᵗ − w̄_k) = −L·update_k
///     Δ_k  = F_k^q · Δw_k
///     h_k  = q·F_k^(q−1)·‖Δw_k‖² + L·F_k^q
///     wᵗ⁺¹ = wᵗ − Σ_k Δ_k / Σ_k h_k
///
/// Both sums stream. As in the authors' reference code (litian96/fair_flearn, qffedavg.py),
/// F_k + 1e-10 is raised to the powers, so a zero loss with q < 1 stays finite.
struct QFedAvg {
  var q: Double
  var lipschitz: Double

  static let lossOffset = 1e-10

  func fold(_ update: Weights, loss: Double, into round: inout RoundAggregate) {
    precondition(loss.isFinite && loss >= 0, "q-FedAvg needs a finite, non-negative loss")
    let f = loss + Self.lossOffset
    let fq = pow(f, q)
    let norm2 = lipschitz * lipschitz * update.dot(update)
    let h = q * pow(f, q - 1) * norm2 + lipschitz * fq
    let a = -lipschitz * fq
    update.values.withUnsafeBufferPointer { u in
      for i in 0..<u.count { round.qNumerator![i] += a * Double(u[i]) }
    }
    round.qDenominator += h
  }

  static func step(_ global: Weights, _ round: RoundAggregate) -> Weights? {
    guard let num = round.qNumerator, round.qDenominator > 0 else { return nil }
    let inv = 1 / round.qDenominator
    var w = [Float](repeating: 0, count: global.count)
    for i in 0..<w.count { w[i] = Float(Double(global.values[i]) - num[i] * inv) }
    return Weights(layout: global.layout, values: w)
  }
}
