# Sourced by the run_*.sh / plot_*.sh scripts: the models of the study and how a comparison's
# folder is named. Every value can be overridden from the environment.
#
#   MODEL_A         the base model                       (EleutherAI/deep-ignorance-unfiltered)
#   MODEL_FILTERED  its data-filtered twin               (EleutherAI/deep-ignorance-e2e-strong-filter)
#   MODEL_CBLAT     its CB-LAT-unlearned twin            (EleutherAI/deep-ignorance-unfiltered-cb-lat)
#   COMPARE_WITH    space-separated list of model-B's to compare against MODEL_A (default: the two twins)
#   OUTPUTS_DIR, PLOTS_DIR, DATA_DIR                     (outputs, plots, data)
#   UV_RUN          how a tool is started                (uv run --quiet --script)
# It also brings common/env.sh (flag, switch, env_flag: environment variable -> tool flag) and makes
# Ctrl-C / SIGTERM stop the script with 130 / 143, as the tools do.
source "$(dirname "${BASH_SOURCE[0]}")/common/env.sh"
on_signals
MODEL_A="${MODEL_A:-EleutherAI/deep-ignorance-unfiltered}"
MODEL_FILTERED="${MODEL_FILTERED:-EleutherAI/deep-ignorance-e2e-strong-filter}"
MODEL_CBLAT="${MODEL_CBLAT:-EleutherAI/deep-ignorance-unfiltered-cb-lat}"
COMPARE_WITH="${COMPARE_WITH:-$MODEL_FILTERED $MODEL_CBLAT}"
OUTPUTS_DIR="${OUTPUTS_DIR:-outputs}"
PLOTS_DIR="${PLOTS_DIR:-plots}"
DATA_DIR="${DATA_DIR:-data}"
UV_RUN="${UV_RUN:-uv run --quiet --script}"

# comparison_name A B -> "<basename A>_vs_<basename B>", e.g.
# deep-ignorance-unfiltered_vs_deep-ignorance-e2e-strong-filter
comparison_name() {
  local a="${1%/}" b="${2%/}"
  printf '%s_vs_%s\n' "${a##*/}" "${b##*/}"
}
