import CohortCore
import CohortProtocol
import Testing

/// Every figure of a report is checked against the plan before it counts.
@Suite struct ReportRulesTests {
  let layout = WeightsLayout([.init("w", [3])])

  func rules(_ reports: ReportsPlan? = nil, secure: Bool = false) -> ReportRules {
    var plan = Plan(name: "p", model: ModelPlan(kind: .logisticRegression, inputShape: [2], classes: 1))
    plan.server.reports = reports
    plan.secureAggregation.enabled = secure
    return ReportRules(plan: plan, layout: layout)
  }

  func report(
    _ values: [Float] = [0.1, -0.2, 0.3], examples: Int = 10, loss: Double = 0.5,
    evaluation: Evaluation? = nil
  ) -> UpdateReport {
    UpdateReport(
      device: 1, round: 1, update: Weights(layout: layout, values: values), examples: examples,
      trainLoss: loss,
      bytes: 12, evaluation: evaluation)
  }

  func refusal(_ rules: ReportRules, _ report: UpdateReport) -> Rejection? {
    if case .failure(let r) = rules.admit(report) { return r }
    return nil
  }

  @Test func anHonestReportCountsUnchanged() throws {
    let admitted = try rules().admit(report(evaluation: Evaluation(loss: 0.3, accuracy: 0.9, examples: 5)))
      .get()
    #expect(admitted.update.values == [0.1, -0.2, 0.3])
  }

  @Test func countsThatWouldOverflowAreOutOfRange() {
    // 2^63 − 1 examples once crashed the server on the next honest report's sum.
    #expect(refusal(rules(), report(examples: .max)) == .outOfRange)
    #expect(refusal(rules(), report(examples: 10_000_001)) == .outOfRange)
    #expect(refusal(rules(.init(maximumExamples: 100)), report(examples: 101)) == .outOfRange)
    #expect(refusal(rules(.init(maximumExamples: 100)), report(examples: 100)) == nil)
    let evaluation = Evaluation(loss: 0.1, accuracy: 0.5, examples: .max)
    #expect(refusal(rules(), report(evaluation: evaluation)) == .outOfRange)
  }

  @Test func lossesAndAccuraciesMustBeWhatTheyAre() {
    #expect(refusal(rules(), report(loss: -1)) == .outOfRange)
    #expect(refusal(rules(), report(loss: .infinity)) == .malformed)
    for e in [
      Evaluation(loss: .infinity, accuracy: 0.5, examples: 5),
      Evaluation(loss: 0.2, accuracy: -3, examples: 5),
      Evaluation(loss: 0.2, accuracy: 1.5, examples: 5), Evaluation(loss: .nan, accuracy: 0.5, examples: 5),
      Evaluation(loss: 0.2, accuracy: 0.5, examples: -1),
    ] {
      #expect(refusal(rules(), report(evaluation: e)) == .outOfRange, "\(e)")
    }
  }

  @Test func aHugeFiniteUpdateIsRefusedOrClippedByTheNormBound() throws {
    let huge: [Float] = [3e38, 3e38, -3e38]
    // No bound: finite values are well formed (the plan decides whether norms are bounded).
    #expect(refusal(rules(), report(huge)) == nil)
    #expect(refusal(rules(.init(maximumUpdateNorm: 1)), report(huge)) == .outOfRange)
    let clipped = try rules(.init(maximumUpdateNorm: 1, overNorm: .clip)).admit(report([3, 0, 4])).get()
    #expect(clipped.update.values.map { ($0 * 1000).rounded() / 1000 } == [0.6, 0, 0.8])
    let clippedHuge = try rules(.init(maximumUpdateNorm: 1, overNorm: .clip)).admit(report(huge)).get()
    let norm = clippedHuge.update.values.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
    #expect(abs(norm - 1) < 1e-5)
  }

  @Test func wrongShapesAndNonFiniteValuesAreMalformed() {
    #expect(refusal(rules(), report([0.1, .nan, 0])) == .malformed)
    #expect(
      refusal(
        rules(),
        UpdateReport(
          device: 1, round: 1, update: Weights(layout: WeightsLayout([.init("w", [2])]), values: [0, 0]),
          examples: 1, trainLoss: 0, bytes: 8)) == .malformed)
    #expect(refusal(rules(), report(examples: 0)) == .malformed)
  }

  @Test func underSecureAggregationAReportCarriesNoUpdate() {
    let empty = UpdateReport(
      device: 1, round: 1, update: Weights(layout: WeightsLayout([]), values: []), examples: 5,
      trainLoss: 0.1,
      bytes: 0)
    #expect(refusal(rules(secure: true), empty) == nil)
    #expect(refusal(rules(secure: true), report()) == .malformed)
    var many = empty
    many.examples = .max
    #expect(refusal(rules(secure: true), many) == .outOfRange)
  }

  @Test func lossesBeyondFloat32AreOutOfRange() {
    // A finite loss of 1e308 times 10 examples made the round's recorded train loss infinite.
    #expect(refusal(rules(), report(loss: 1e308)) == .outOfRange)
    #expect(
      refusal(
        rules(), report(evaluation: Evaluation(loss: .greatestFiniteMagnitude, accuracy: 0.5, examples: 2)))
        == .outOfRange)
    var atGlobal = report()
    atGlobal.lossAtGlobal = 1e300
    #expect(refusal(rules(), atGlobal) == .outOfRange)
    #expect(refusal(rules(), report(loss: Double(Float.greatestFiniteMagnitude))) == nil)
  }
}
