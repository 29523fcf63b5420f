public import CohortAggregation
import CohortCore
import CohortProtocol
import Foundation

/// A coordinator that is one replica of a run (`Configuration.replica`): it closes each round
/// with its own devices, stores its contribution, and either leads the round (combines every
/// replica's contribution, steps the strategy, commits under its fencing token) or takes the
/// leader's decision from the store.
extension Coordinator {
  /// The rounds gathering and training here, for the replica's look at the shared cohort.
  public var replicaRounds: (selecting: Int?, reporting: Int?) {
    (pipeline.selectingRound, pipeline.reportingRound)
  }

  /// The other replicas filled `round`'s cohort.
  public func cohortFilledElsewhere(round: Int) async {
    await perform(pipeline.cohortFilledElsewhere(round: round, now: clock.now))
  }

  /// The replicas together met `round`'s goal of reports.
  public func goalMetElsewhere(round: Int) async {
    await perform(pipeline.goalMetElsewhere(round: round, now: clock.now))
  }

  /// Check-ins per second arriving here, and the other replicas', for pace steering.
  public var checkInRate: Double { pipeline.checkInRate(now: clock.now) }
  public func setOtherCheckInRate(_ rate: Double) { pipeline.setOtherCheckInRate(rate) }

  /// A replica joining a run takes the strategy state of its last committed round.
  public func resumeStrategy(_ state: StrategyState) async {
    strategyState = state
    await aggregator.adopt(state)
  }

  func aggregateAsReplica(round: Int, link: ReplicaLink) async {
    let secure = await configuration.secureAggregation?.secureSum(
      round: round, devices: pipeline.reported(round: round))
    let partial = await aggregator.partial(round: round, last: takeBatch())
    let mine = ReplicaContribution(aggregate: partial, tally: pipeline.tally(round: round), secure: secure)
    // Nothing changes here until the store has the round's decision: a leader whose commit is
    // fenced (or lost) follows the decision like any other replica.
    while let decision = await link.decide(round: round, contribution: mine) {
      switch decision {
      case .decided(let record, let model, let state):
        await follow(round: round, record: record, model: model, state: state)
        return
      case .lead(let stored):
        if await lead(round: round, stored: stored, mine: mine, link: link) { return }
      }
    }
  }

  /// Takes the round as the store has it.
  private func follow(round: Int, record: RoundRecord, model: Weights?, state: Data?) async {
    let committed = record.outcome == .committed && model != nil
    if committed, let model {
      adoptGlobal(model, round: round)
      if let state {
        var r = SnapshotReader([UInt8](state))
        if let s = try? StrategyState(restoring: &r) {
          strategyState = s
          await aggregator.adopt(s)
        }
      }
    }
    let (_, actions) = pipeline.aggregated(
      round: round, RoundPipeline.Aggregation(producedModel: committed), now: clock.now)
    logger.info(
      "round \(committed ? "committed" : "abandoned") by the leader", metadata: ["round": "\(round)"])
    metrics.written(record)
    for observer in roundObservers { observer(record) }
    if committed { await perform(pipeline.committed(round: round, now: clock.now)) }
    await perform(actions)
  }

  /// Leads the round: combines every contribution, steps the strategy and commits. False when the
  /// commit did not land as this replica's (another took the lease, or the round was decided
  /// meanwhile): the store's decision is to be waited for and followed.
  private func lead(round: Int, stored: [String: Data], mine: ReplicaContribution, link: ReplicaLink) async
    -> Bool
  {
    let me = link.configuration.replica
    var contributions: [ReplicaContribution] = []
    for name in Set(stored.keys).union([me]).sorted() {
      if name == me {
        contributions.append(mine)
        continue
      }
      do throws(CohortError) {
        contributions.append(try ReplicaContribution(decoding: stored[name]!, strategy: aggregator.strategy))
      } catch {
        logger.error(
          "a replica's contribution is unreadable; the round goes on without it",
          metadata: ["round": "\(round)", "replica": "\(name)", "error": "\(error.message)"])
      }
    }
    let combined = ReplicaContribution.combine(contributions, strategy: aggregator.strategy)
    var secure: SecureSum?
    if let driver = configuration.secureAggregation {
      var decoded: (weightedSum: [Double], totalWeight: Double)?
      if let ring = combined.ringSum {
        decoded = await driver.decode(ringSum: ring, devices: combined.ringDevices.count, round: round)
      }
      // A sum that decodes to a negative or infinite weight, or of the wrong length, is damaged
      // (a corrupt row): the round fails like a failed protocol instead of trapping every leader.
      if let d = decoded,
        !(d.totalWeight.isFinite && d.totalWeight >= 0 && d.weightedSum.count == global.count
          && d.weightedSum.allSatisfy(\.isFinite))
      {
        decoded = nil
      }
      secure = SecureSum(
        weightedSum: decoded?.weightedSum, totalWeight: decoded?.totalWeight ?? 0,
        survivors: decoded == nil ? [] : combined.ringDevices, examples: combined.ringExamples,
        failure: decoded != nil
          ? nil : combined.secureFailures.first ?? "no replica's secure aggregation gave a sum",
        steps: combined.secureSteps, rejectedMessages: combined.secureRejected)
    }
    let result: Aggregator.Result
    if combined.tally.counts.reported >= configuration.plan.server.cohort.minimumReports {
      result = await aggregator.step(
        round: round, combined: combined.aggregate, secureSum: secure, global: global,
        privacy: pipeline.configuration.privacy, clip: pipeline.clipNorm)
    } else {
      result = Aggregator.Result(
        model: nil, strategyState: strategyState,
        aggregation: RoundPipeline.Aggregation(producedModel: false))
    }
    // The record from a copy of the pipeline: the pipeline itself moves on only once the round
    // is this replica's in the store.
    var preview = pipeline
    preview.adopt(combined.tally, round: round)
    let closed = preview.aggregated(round: round, result.aggregation, now: clock.now).closed
    var record = closed.record
    if let model = result.model, let evaluator, closed.evaluate {
      let e = await evaluator.evaluate(model)
      record.evalLoss = e.loss
      record.evalAccuracy = e.accuracy
    }
    var state = SnapshotWriter()
    result.strategyState.save(into: &state)
    do throws(ReplicaLink.CommitRefusal) {
      try await link.commit(
        record, checkpoint: result.model, devices: closed.participants, strategyState: Data(state.bytes),
        secureAggregation: result.aggregation.secureSteps, attempts: configuration.commitAttempts,
        backoff: configuration.commitBackoff)
    } catch {
      switch error {
      case .fenced:
        logger.warning("round \(round) was decided by another replica; following its decision")
        return false
      case .failed(let cause):
        failure = .commitAbandoned(round: round, attempts: configuration.commitAttempts, cause: cause)
        logger.critical("stopping: \(failure!.message)")
        await perform([])
        return true
      }
    }
    strategyState = result.strategyState
    await aggregator.adopt(result.strategyState)
    if let model = result.model { adoptGlobal(model, round: round) }
    pipeline.adopt(combined.tally, round: round)
    let actions = pipeline.aggregated(round: round, result.aggregation, now: clock.now).actions
    pending = ClosedRound(
      record: record, model: result.model, participants: closed.participants, lateReports: [:],
      secureAggregation: result.aggregation.secureSteps)
    _ = await takePending()
    await perform(actions)
    return true
  }
}
