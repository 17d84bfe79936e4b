"""The seed's monitoring sample, verbatim, for the tests that run it.

Kept here rather than read from the seed file, so the tests run wherever the repository is
cloned. ``SEED_MONITORING`` builds the pipeline; ``SEED_MONITORING_INSIGHTS`` is the rest of
the sample: the dashboard, a real-time view, a run and the insights.
"""

SEED_MONITORING = '''
monitoring_config = {
    "metrics_collection": {
        "system_metrics": True,
        "business_metrics": True,
        "custom_metrics": True,
        "collection_interval": "10s"
    },
    "alerting": {
        "slack_webhook": "https://hooks.slack.com/...",
        "email_alerts": ["ops@company.com"],
        "pager_duty": True
    },
    "anomaly_detection": {
        "enabled": True,
        "sensitivity": "medium",
        "ml_model": "isolation_forest"
    },
    "predictive_analytics": {
        "failure_prediction": True,
        "performance_forecasting": True,
        "resource_optimization": True
    }
}

# Enhanced pipeline with monitoring
monitored_pipeline = Pipeline("production_etl")
monitored_pipeline.enable_monitoring(monitoring_config)

# Custom metrics
@monitored_pipeline.track_metric("data_quality_score")
def data_quality_task(data):
    quality_score = calculate_data_quality(data)
    return {"processed_data": data, "quality_score": quality_score}

# Performance tracking
@monitored_pipeline.track_performance
def expensive_computation(data):
    # Track execution time, memory usage, CPU utilization
    return complex_algorithm(data)

# Business metrics
@monitored_pipeline.track_business_metric("revenue_impact")
def revenue_calculation(data):
    revenue = calculate_revenue_impact(data)
    return {"data": data, "revenue": revenue}
'''

SEED_MONITORING_INSIGHTS = '''
# Execute with comprehensive monitoring
monitoring_dashboard = pm.get_monitoring_dashboard()
real_time_metrics = monitoring_dashboard.start_real_time_view(monitored_pipeline)

result = pm.execute_pipeline(monitored_pipeline)

# Get insights
performance_report = monitoring_dashboard.generate_performance_report()
anomalies = monitoring_dashboard.detect_anomalies(time_window="last_24h")
optimization_suggestions = monitoring_dashboard.get_optimization_suggestions()
'''
